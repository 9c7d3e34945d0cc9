//! /etc/resolv.conf from the leases, boot NIC's servers first.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// musl and glibc read at most three nameservers and six search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 6;

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct ResolvError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// resolv.conf's text for these servers and search domains, both in priority order;
/// duplicates dropped, lists cut to what resolvers read.
pub fn render(servers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# written by siderite-agent from DHCP / static configuration\n");
    let mut domains: Vec<&str> = Vec::new();
    for domain in search {
        if !domains.contains(&domain.as_str()) && domains.len() < MAX_SEARCH {
            domains.push(domain);
        }
    }
    if !domains.is_empty() {
        out.push_str("search ");
        out.push_str(&domains.join(" "));
        out.push('\n');
    }
    let mut seen: Vec<IpAddr> = Vec::new();
    for server in servers {
        if !seen.contains(server) && seen.len() < MAX_NAMESERVERS {
            seen.push(*server);
            out.push_str(&format!("nameserver {server}\n"));
        }
    }
    out
}

/// Replaces `path` with `content` atomically (write aside, rename), creating its directory
/// (an initramfs may have no /etc).
pub fn write(path: &Path, content: &str) -> Result<(), ResolvError> {
    let err = |source| ResolvError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(".siderite-tmp");
    let aside = PathBuf::from(aside);
    std::fs::write(&aside, content).map_err(err)?;
    std::fs::rename(&aside, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_order_without_duplicates_and_capped() {
        let servers: Vec<IpAddr> = [
            "10.0.0.53",
            "10.0.0.54",
            "10.0.0.53",
            "fd00::53",
            "10.0.0.55",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let search = vec![
            "lab.example".to_string(),
            "example".to_string(),
            "lab.example".to_string(),
        ];
        assert_eq!(
            render(&servers, &search),
            "# written by siderite-agent from DHCP / static configuration\n\
             search lab.example example\n\
             nameserver 10.0.0.53\n\
             nameserver 10.0.0.54\n\
             nameserver fd00::53\n"
        );
        assert_eq!(
            render(&[], &[]),
            "# written by siderite-agent from DHCP / static configuration\n"
        );
    }

    #[test]
    fn writes_atomically_creating_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");
        write(&path, "nameserver 10.0.0.1\n").unwrap();
        write(&path, "nameserver 10.0.0.2\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 10.0.0.2\n"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("etc")).unwrap().count(),
            1
        );
    }
}
