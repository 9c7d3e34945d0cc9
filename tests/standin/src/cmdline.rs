//! The `talos.*` arguments of the kernel command line, the only ones the stand-in reads.

/// What Talos would read from its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TalosArgs {
    /// `talos.config=URL`: where the machine configuration comes from.
    pub config: Option<String>,
    /// `talos.platform=NAME` (`metal` for bare metal).
    pub platform: Option<String>,
    /// `siderite.ca=sha256:...`: the CA an https config URL is pinned to.
    pub ca: Option<String>,
}

/// Picks `talos.config=` and `talos.platform=` out of a kernel command line; the last
/// occurrence wins, as with the kernel's own parameters.
pub fn parse(cmdline: &str) -> TalosArgs {
    let mut args = TalosArgs::default();
    for word in split(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        let slot = match key {
            "talos.config" => &mut args.config,
            "talos.platform" => &mut args.platform,
            "siderite.ca" => &mut args.ca,
            _ => continue,
        };
        *slot = value.filter(|v| !v.is_empty()).map(str::to_string);
    }
    args
}

/// Splits at whitespace outside double quotes and drops the quotes, like the kernel's
/// `next_arg` (`key="a b"` is one word, `key=a b`).
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_config_and_platform() {
        let a = parse(
            "console=ttyS0 talos.platform=metal talos.config=http://10.0.2.2:8080/config?t=abc&u=1\n",
        );
        assert_eq!(
            a.config.as_deref(),
            Some("http://10.0.2.2:8080/config?t=abc&u=1")
        );
        assert_eq!(a.platform.as_deref(), Some("metal"));
    }

    #[test]
    fn quotes_last_wins_and_empty_values() {
        let a = parse("talos.config=http://a/1 \"talos.config=http://b/2\" talos.platform=");
        assert_eq!(a.config.as_deref(), Some("http://b/2"));
        assert_eq!(a.platform, None);
        assert_eq!(parse("talos.configx=1 talos.config").config, None);
        assert_eq!(
            split(r#"a="b c"  d"#),
            vec!["a=b c".to_string(), "d".to_string()]
        );
    }
}
