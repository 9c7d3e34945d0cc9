//! Network interfaces from root/sys/class/net, with the driver behind each and, for the live
//! system only, their addresses.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use siderite::proto::agent::v1::Nic;

use super::{device_path_below, hex_id, is_live_root, link_name, read_attr, read_num};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("listing network interfaces in {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading interface addresses")]
    Addresses(#[source] nix::Error),
}

/// The interfaces, and what could not be read about them.
#[derive(Debug, Default)]
pub struct NicListing {
    pub nics: Vec<Nic>,
    pub problems: Vec<NetError>,
}

/// The machine's network interfaces.
pub trait NetInterfaces: Send + Sync {
    /// Every interface but loopback, sorted by name.
    fn interfaces(&self) -> Result<NicListing, NetError>;
}

/// Reads root/sys/class/net. Addresses come from getifaddrs(3), which cannot look below a
/// root, so they are filled in only when root is "/" and left empty otherwise.
pub struct LinuxNetInterfaces {
    root: PathBuf,
}

impl LinuxNetInterfaces {
    pub fn new(root: &Path) -> Self {
        LinuxNetInterfaces {
            root: root.to_path_buf(),
        }
    }
}

impl NetInterfaces for LinuxNetInterfaces {
    fn interfaces(&self) -> Result<NicListing, NetError> {
        let sys = self.root.join("sys");
        let dir = sys.join("class/net");
        let mut names =
            super::block::list_dir(&dir).map_err(|source| NetError::List { path: dir, source })?;
        names.sort();
        let mut listing = NicListing {
            nics: names
                .iter()
                .filter_map(|name| read_sysfs_nic(&sys, name))
                .collect(),
            problems: Vec::new(),
        };
        if is_live_root(&self.root) {
            match live_addresses() {
                Ok(addrs) => {
                    for nic in &mut listing.nics {
                        nic.addresses = addrs
                            .iter()
                            .filter(|(name, _)| *name == nic.name)
                            .map(|(_, a)| a.clone())
                            .collect();
                    }
                }
                Err(e) => listing.problems.push(e),
            }
        }
        Ok(listing)
    }
}

/// ARPHRD_LOOPBACK.
const LOOPBACK_TYPE: u32 = 772;

/// Describes `sys/class/net/<name>`; `None` for loopback.
pub fn read_sysfs_nic(sys: &Path, name: &str) -> Option<Nic> {
    let dir = sys.join("class/net").join(name);
    if name == "lo" || read_num::<u32>(&dir.join("type")) == Some(LOOPBACK_TYPE) {
        return None;
    }
    let attr = |rel: &str| read_attr(&dir.join(rel)).unwrap_or_default();
    let device = dir.join("device");
    let mut nic = Nic {
        name: name.to_string(),
        mac: attr("address"),
        operstate: attr("operstate"),
        // Reading carrier fails with EINVAL while the link is administratively down.
        carrier: attr("carrier") == "1",
        // -1 or unreadable when there is no link or the driver does not know.
        speed_mbps: read_num::<i64>(&dir.join("speed"))
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        mtu: read_num(&dir.join("mtu")).unwrap_or(0),
        r#virtual: !device.exists(),
        ..Default::default()
    };
    if nic.r#virtual {
        return Some(nic);
    }
    nic.driver = link_name(&device.join("driver")).unwrap_or_default();
    nic.driver_bound = !nic.driver.is_empty();
    if let Some(pci) = pci_function(sys, &device) {
        let id = |f: &str| {
            read_attr(&pci.join(f))
                .map(|s| hex_id(&s))
                .unwrap_or_default()
        };
        nic.pci_address = pci
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        nic.pci_vendor = id("vendor");
        nic.pci_device = id("device");
    }
    Some(nic)
}

/// The PCI function behind a net device: the device itself, or for virtio-net the PCI
/// function the virtio device sits on. USB and platform NICs have none.
fn pci_function(sys: &Path, device: &Path) -> Option<PathBuf> {
    let real = sys.join(device_path_below(sys, device)?);
    match link_name(&real.join("subsystem"))?.as_str() {
        "pci" => Some(real),
        "virtio" => {
            let parent = real.parent()?.to_path_buf();
            (link_name(&parent.join("subsystem")).as_deref() == Some("pci")).then_some(parent)
        }
        _ => None,
    }
}

/// "address/prefix" text for one interface address.
pub fn cidr(addr: IpAddr, netmask: Option<IpAddr>) -> String {
    let prefix = match netmask {
        Some(IpAddr::V4(m)) => u32::from(m).count_ones(),
        Some(IpAddr::V6(m)) => u128::from(m).count_ones(),
        None => match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        },
    };
    format!("{addr}/{prefix}")
}

/// (interface, "address/prefix") for every IPv4/IPv6 address on the live system.
fn live_addresses() -> Result<Vec<(String, String)>, NetError> {
    let ip = |s: &nix::sys::socket::SockaddrStorage| -> Option<IpAddr> {
        if let Some(v4) = s.as_sockaddr_in() {
            Some(IpAddr::V4(v4.ip()))
        } else {
            s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        }
    };
    let addrs = nix::ifaddrs::getifaddrs().map_err(NetError::Addresses)?;
    Ok(addrs
        .filter_map(|a| {
            let addr = ip(a.address.as_ref()?)?;
            let mask = a.netmask.as_ref().and_then(ip);
            Some((a.interface_name, cidr(addr, mask)))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sysfs/lab")
    }

    #[test]
    fn lab_interfaces() {
        let listing = LinuxNetInterfaces::new(&lab()).interfaces().unwrap();
        assert!(listing.problems.is_empty());
        let names: Vec<&str> = listing.nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["br0", "eno1", "enp3s0", "eth0"], "lo is skipped");
        assert_eq!(
            listing.nics[1],
            Nic {
                name: "eno1".into(),
                mac: "3c:ec:ef:01:02:03".into(),
                driver: "e1000e".into(),
                driver_bound: true,
                pci_address: "0000:00:1f.6".into(),
                pci_vendor: "8086".into(),
                pci_device: "15bc".into(),
                operstate: "up".into(),
                carrier: true,
                speed_mbps: 1000,
                mtu: 1500,
                addresses: vec![],
                r#virtual: false,
            }
        );
    }

    #[test]
    fn lab_bridge_is_virtual() {
        let listing = LinuxNetInterfaces::new(&lab()).interfaces().unwrap();
        let br0 = &listing.nics[0];
        assert!(br0.r#virtual);
        assert_eq!(br0.driver, "");
        assert_eq!(br0.pci_address, "");
        assert_eq!(br0.mac, "5a:00:00:00:00:01");
    }

    #[test]
    fn lab_down_link() {
        let listing = LinuxNetInterfaces::new(&lab()).interfaces().unwrap();
        let nic = &listing.nics[2];
        assert_eq!(nic.name, "enp3s0");
        assert_eq!(nic.driver, "igb");
        assert_eq!(nic.pci_address, "0000:03:00.0");
        assert_eq!(
            (nic.pci_vendor.as_str(), nic.pci_device.as_str()),
            ("8086", "1533")
        );
        assert_eq!(nic.operstate, "down");
        assert!(!nic.carrier, "unreadable carrier reads as false");
        assert_eq!(nic.speed_mbps, 0, "speed -1 reads as 0");
    }

    #[test]
    fn device_without_driver() {
        // The kernel removes the netdev with its driver, so this is rare; the PCI identity
        // must still come through.
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let pci = sys.join("devices/pci0000:00/0000:04:00.0");
        std::fs::create_dir_all(pci.join("net/enp4s0")).unwrap();
        std::fs::create_dir_all(sys.join("bus/pci")).unwrap();
        std::fs::create_dir_all(sys.join("class/net")).unwrap();
        std::fs::write(pci.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(pci.join("device"), "0x10d3\n").unwrap();
        std::os::unix::fs::symlink("../../../bus/pci", pci.join("subsystem")).unwrap();
        std::os::unix::fs::symlink("../../../0000:04:00.0", pci.join("net/enp4s0/device")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:04:00.0/net/enp4s0",
            sys.join("class/net/enp4s0"),
        )
        .unwrap();
        let nic = read_sysfs_nic(&sys, "enp4s0").unwrap();
        assert!(!nic.r#virtual);
        assert!(!nic.driver_bound);
        assert_eq!(nic.driver, "");
        assert_eq!(nic.pci_address, "0000:04:00.0");
        assert_eq!(
            (nic.pci_vendor.as_str(), nic.pci_device.as_str()),
            ("8086", "10d3")
        );
    }

    #[test]
    fn lab_virtio_net_finds_its_pci_function() {
        let listing = LinuxNetInterfaces::new(&lab()).interfaces().unwrap();
        let eth0 = &listing.nics[3];
        assert_eq!(eth0.driver, "virtio_net");
        assert_eq!(eth0.pci_address, "0000:00:02.0");
        assert_eq!(
            (eth0.pci_vendor.as_str(), eth0.pci_device.as_str()),
            ("1af4", "1041")
        );
        assert_eq!(eth0.speed_mbps, 0, "unreadable speed reads as 0");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            cidr(
                "192.0.2.10".parse().unwrap(),
                Some("255.255.255.0".parse().unwrap())
            ),
            "192.0.2.10/24"
        );
        assert_eq!(
            cidr(
                "2001:db8::1".parse().unwrap(),
                Some("ffff:ffff:ffff:ffff::".parse().unwrap())
            ),
            "2001:db8::1/64"
        );
        assert_eq!(cidr("10.0.0.1".parse().unwrap(), None), "10.0.0.1/32");
    }

    #[test]
    fn live_system_lists_without_error() {
        // Whatever this machine has; only that it reads without failing.
        if Path::new("/sys/class/net").exists() {
            let listing = LinuxNetInterfaces::new(Path::new("/"))
                .interfaces()
                .unwrap();
            assert!(listing.problems.is_empty(), "{:?}", listing.problems);
            assert!(listing.nics.iter().all(|n| n.name != "lo"));
        }
    }
}
