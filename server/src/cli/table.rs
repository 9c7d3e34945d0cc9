//! kubectl-like plain tables: an upper-case header, columns padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(self.rows.iter()) {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == cols {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}   "));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in the binary units operators read on disk labels: 512Mi, 1.5Gi, 2Ti.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}")
    } else if v.fract() < 0.05 || v >= 100.0 {
        format!("{:.0}{}", v, UNITS[u])
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}

/// Age like kubectl: 45s, 12m, 5h, 3d.
pub fn age(since_rfc3339: &str, now: time::OffsetDateTime) -> String {
    let Ok(t) = time::OffsetDateTime::parse(
        since_rfc3339,
        &time::format_description::well_known::Rfc3339,
    ) else {
        return "<unknown>".into();
    };
    let s = (now - t).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned() {
        let mut t = Table::new(["NAME", "SIZE"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "22".into()]);
        assert_eq!(t.render(), "NAME     SIZE\na        1\nlonger   22\n");
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(10 * 1024 * 1024 * 1024), "10Gi");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5Gi");
    }

    #[test]
    fn ages() {
        let now = time::macros::datetime!(2026-01-02 00:00 UTC);
        assert_eq!(age("2026-01-01T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-01T23:00:00Z", now), "60m");
        assert_eq!(age("2025-12-30T00:00:00Z", now), "3d");
        assert_eq!(age("junk", now), "<unknown>");
    }
}
