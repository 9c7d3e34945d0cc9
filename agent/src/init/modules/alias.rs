//! `modules.alias`: which module drives a device, by glob pattern on its modalias.
use std::collections::HashMap;

use super::normalize;

/// The parsed `modules.alias`: `alias <pattern> <module>` lines, as depmod writes them.
#[derive(Debug, Default)]
pub struct AliasTable {
    entries: Vec<(String, String)>,
    /// Patterns by their literal prefix before the first `:` (the bus: `pci`, `usb`,
    /// `virtio`...), so a lookup tries tens of patterns instead of tens of thousands.
    by_bus: HashMap<String, Vec<usize>>,
    /// Patterns whose bus part has a wildcard: tried for every lookup.
    wild: Vec<usize>,
}

impl AliasTable {
    /// Parses `modules.alias`. Comments, blank and malformed lines are skipped, as modprobe
    /// does.
    pub fn parse(text: &str) -> Self {
        let mut table = AliasTable::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let index = table.entries.len();
            table.entries.push((pattern.to_string(), normalize(module)));
            let bus = bus_of(pattern);
            if bus.contains(['*', '?', '[']) {
                table.wild.push(index);
            } else {
                table.by_bus.entry(bus.to_string()).or_default().push(index);
            }
        }
        table
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every module whose pattern matches `modalias`, in file order, each once.
    pub fn lookup(&self, modalias: &str) -> Vec<&str> {
        let bus = self.by_bus.get(bus_of(modalias)).map(Vec::as_slice);
        let mut indices: Vec<usize> = bus.unwrap_or_default().to_vec();
        indices.extend(&self.wild);
        indices.sort_unstable();
        let mut out: Vec<&str> = Vec::new();
        for i in indices {
            let (pattern, module) = &self.entries[i];
            if fnmatch(pattern.as_bytes(), modalias.as_bytes()) && !out.contains(&module.as_str()) {
                out.push(module);
            }
        }
        out
    }
}

fn bus_of(s: &str) -> &str {
    s.split_once(':').map_or(s, |(bus, _)| bus)
}

/// `fnmatch(3)` without flags, as kmod matches aliases: `*`, `?` and `[...]` classes
/// (`[!...]`/`[^...]` negate, `a-z` ranges); an unclosed `[` is a literal.
pub fn fnmatch(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it covers to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p..], text[t]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (text[t] == b'[').then_some(1),
            },
            Some(&c) => (c == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                t += 1;
            }
            (None, Some((sp, st))) => {
                // Let the last `*` swallow one more byte and try again.
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pattern` (which begins with `[`).
/// Returns whether it matched and the class's length, or `None` if the class is unclosed.
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| fnmatch(p.as_bytes(), t.as_bytes());
        assert!(m(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!m(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(m("*", ""));
        assert!(m("a*", "a"));
        assert!(!m("a*b", "a"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("usb:v05ACp021[0-9]d*", "usb:v05ACp0215d0100"));
        assert!(!m("usb:v05ACp021[0-9]d*", "usb:v05ACp021Ad0100"));
        assert!(m("x[!0-9]y", "xay"));
        assert!(!m("x[^0-9]y", "x5y"));
        assert!(m("x[]]y", "x]y"));
        assert!(m("x[a-]y", "x-y"));
        assert!(m("x[abc", "x[abc"), "an unclosed class is literal");
        assert!(!m("abc", "abcd"));
        assert!(!m("abcd", "abc"));
        assert!(m("**a**", "xxa"));
        assert!(m("scsi:t-0x00*", "scsi:t-0x00"));
    }

    #[test]
    fn parses_and_looks_up() {
        let table = AliasTable::parse(
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
             alias virtio:d00000001v* virtio_net\n\
             alias *:foo* wildbus\n\
             alias fs-efivarfs efivarfs\n\
             alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio-pci\n\
             alias broken\n\
             alias too many fields\n\
             \n",
        );
        assert_eq!(table.len(), 6);
        assert_eq!(
            table.lookup("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"],
            "matches in file order, names normalized, each once"
        );
        assert_eq!(
            table.lookup("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci"]
        );
        assert_eq!(table.lookup("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(table.lookup("acpi:foo:"), ["wildbus"]);
        assert_eq!(table.lookup("fs-efivarfs"), ["efivarfs"]);
        assert!(table
            .lookup("usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00")
            .is_empty());
    }
}
