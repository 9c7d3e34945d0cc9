//! Auto-accept rules: which newly discovered machines are accepted without an operator.
//!
//! Syntax: `none` (default), `all`, or comma-separated `field=glob` terms that must all
//! match, over the SMBIOS system fields `manufacturer`, `product`, `serial`, `sku`,
//! `family`, `uuid`. Globs know `*` and `?`. Example: `manufacturer=QEMU,product=Standard*`.
use std::fmt;
use std::str::FromStr;

use siderite::proto::agent::v1::Hardware;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AutoAccept {
    #[default]
    None,
    All,
    Match(Vec<(Field, String)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Manufacturer,
    Product,
    Serial,
    Sku,
    Family,
    Uuid,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("auto-accept term {0:?} is not field=glob")]
    Term(String),
    #[error(
        "auto-accept field {0:?} is unknown (manufacturer, product, serial, sku, family, uuid)"
    )]
    Field(String),
}

impl FromStr for AutoAccept {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "none" => return Ok(AutoAccept::None),
            "all" => return Ok(AutoAccept::All),
            _ => {}
        }
        let mut terms = Vec::new();
        for term in s.split(',') {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| RuleError::Term(term.to_string()))?;
            let field = match k.trim() {
                "manufacturer" => Field::Manufacturer,
                "product" => Field::Product,
                "serial" => Field::Serial,
                "sku" => Field::Sku,
                "family" => Field::Family,
                "uuid" => Field::Uuid,
                other => return Err(RuleError::Field(other.to_string())),
            };
            terms.push((field, v.trim().to_string()));
        }
        Ok(AutoAccept::Match(terms))
    }
}

impl fmt::Display for AutoAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutoAccept::None => f.write_str("none"),
            AutoAccept::All => f.write_str("all"),
            AutoAccept::Match(terms) => {
                let parts: Vec<String> = terms
                    .iter()
                    .map(|(k, v)| format!("{}={v}", format!("{k:?}").to_lowercase()))
                    .collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// `*` matches any run, `?` one character; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl AutoAccept {
    pub fn matches(&self, hw: &Hardware) -> bool {
        match self {
            AutoAccept::None => false,
            AutoAccept::All => true,
            AutoAccept::Match(terms) => {
                let sys = hw.system.clone().unwrap_or_default();
                terms.iter().all(|(field, pat)| {
                    let value = match field {
                        Field::Manufacturer => &sys.manufacturer,
                        Field::Product => &sys.product,
                        Field::Serial => &sys.serial,
                        Field::Sku => &sys.sku,
                        Field::Family => &sys.family,
                        Field::Uuid => &sys.uuid,
                    };
                    glob(pat, value)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siderite::proto::agent::v1::System;

    #[test]
    fn globs() {
        assert!(glob("Standard*", "Standard PC (Q35)"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
        assert!(!glob("QEMU", "QEMU2"));
    }

    #[test]
    fn rules() {
        let hw = Hardware {
            system: Some(System {
                manufacturer: "QEMU".into(),
                product: "Standard PC".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!("all".parse::<AutoAccept>().unwrap().matches(&hw));
        assert!(!"none".parse::<AutoAccept>().unwrap().matches(&hw));
        assert!("manufacturer=QEMU,product=Standard*"
            .parse::<AutoAccept>()
            .unwrap()
            .matches(&hw));
        assert!(!"manufacturer=Dell*"
            .parse::<AutoAccept>()
            .unwrap()
            .matches(&hw));
        assert_eq!(
            "colour=red".parse::<AutoAccept>(),
            Err(RuleError::Field("colour".into()))
        );
        assert!(matches!(
            "manufacturer".parse::<AutoAccept>(),
            Err(RuleError::Term(_))
        ));
    }
}
