//! Every instance on its own network. See `docs/networking.md`.
//!
//! Each instance with networking gets a network namespace of its own,
//! holding:
//! - `tap0`, the TAP device its VMM's NIC uses (`169.254.0.1/30`, the
//!   guest's gateway, with a fixed MAC);
//! - `uplink`, one end of a veth pair whose other end (`fl-N`) is in the
//!   host's namespace; the pair carries `10.200.N.{1,2}/30` (from
//!   `instance_cidr`, one /30 per namespace);
//! - nftables rules: the guest's address is translated to the namespace's
//!   own (SNAT), the resolver address is forwarded to the host's resolver
//!   (DNAT), and the forward chain accepts only replies and what the
//!   function's egress rules allow.
//!
//! Every clone of a snapshot sees the same guest address (`169.254.0.2`),
//! MAC and gateway, so a snapshot restores without reconfiguring the
//! guest. The host masquerades the instances' traffic out of its other
//! interfaces, and refuses traffic between two instances.
//!
//! Namespaces are prepared ahead (links, addresses, routes, base rules);
//! taking one for an instance installs its function's egress rules (one
//! netlink batch). A namespace lives as long as the descriptors that flintd
//! and the VMM hold: a crash of both frees it with everything in it.

pub mod nft;
pub mod policy;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

pub use policy::{Cidr, EgressRule, Mode, NetworkConfig, Protocol};

use nft::{Batch, Chain, Hook, Match, Rule, Verdict};

/// The guest's side of every instance network: the same in every clone.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
pub const GUEST_PREFIX: u8 = 30;
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0x00, 0x02];
const TAP_MAC: [u8; 6] = [0x06, 0x00, 0xa9, 0xfe, 0x00, 0x01];

/// The table flintd owns, on the host and in each namespace.
const TABLE: &str = "flint";
const TAP: &str = "tap0";
const UPLINK: &str = "uplink";
const EGRESS: &str = "egress";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    #[error("nftables: {0}")]
    Nft(#[source] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("creating a network namespace failed: {0}")]
    Namespace(#[source] std::io::Error),
    #[error("creating the TAP device failed: {0}")]
    Tap(#[source] std::io::Error),
    #[error("writing {0} failed: {1}")]
    Sysctl(&'static str, #[source] std::io::Error),
    #[error("all {0} instance networks of the address plan are in use")]
    Exhausted(u32),
}

impl From<rtnetlink::Error> for NetworkError {
    fn from(e: rtnetlink::Error) -> Self {
        NetworkError::Netlink(e.to_string())
    }
}

/// The node's network settings (`[network]`).
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub enabled: bool,
    /// Addresses of the veth pairs, one /30 per instance.
    pub instance_cidr: Cidr,
    /// The resolver that the guest's `169.254.0.1:53` is forwarded to.
    pub dns: Option<Ipv4Addr>,
    /// Namespaces kept prepared ahead.
    pub prepared: usize,
    /// Names this node's host objects: the table `flint[-TAG]` and links
    /// `fl[TAG]-N`, so that two nodes (tests) on one host keep apart.
    pub tag: String,
}

impl NetworkSettings {
    fn host_table(&self) -> String {
        if self.tag.is_empty() {
            TABLE.to_string()
        } else {
            format!("{TABLE}-{}", self.tag)
        }
    }

    /// The prefix of this node's host links.
    pub fn link_prefix(&self) -> String {
        format!("fl{}-", self.tag)
    }

    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.tag.len() > 3
            || !self
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetworkError::Invalid(format!(
                "tag {:?}: at most 3 of a-z, 0-9",
                self.tag
            )));
        }
        if self.instance_cidr.prefix > 28 {
            return Err(NetworkError::Invalid(format!(
                "instance_cidr {}: at least a /28",
                self.instance_cidr
            )));
        }
        Ok(())
    }
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            enabled: true,
            instance_cidr: Cidr::new(Ipv4Addr::new(10, 200, 0, 0), 16),
            dns: host_resolver(),
            prepared: 2,
            tag: String::new(),
        }
    }
}

/// The first IPv4 `nameserver` of the host's `/etc/resolv.conf` that a
/// namespace can reach (not loopback).
pub fn host_resolver() -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
}

/// What the node shows of its networks.
#[derive(Debug, Clone, Default)]
pub struct NetworkStats {
    pub ready: usize,
    pub in_use: u32,
    pub prepared_total: u64,
    /// Mean time to prepare a namespace, in microseconds.
    pub prepare_mean_us: u64,
}

/// What the VMM needs of an instance network; the slot stays alive as long
/// as the VMM holds this.
pub trait NetBackend: Send + Sync {
    fn tap_fd(&self) -> RawFd;
    fn netns_fd(&self) -> RawFd;
}

/// The address plan's leases and the host's netlink handle, shared by the
/// slots (which give their lease back when they go).
struct Shared {
    /// Netlink in the host's namespace, opened on the first use in flintd's
    /// runtime (its connection runs there).
    host: Mutex<Option<rtnetlink::Handle>>,
    capacity: u32,
    free: Mutex<std::collections::BTreeSet<u32>>,
    next: Mutex<u32>,
    in_use: AtomicU32,
    names: AtomicU32,
}

impl Shared {
    fn host(&self) -> Result<rtnetlink::Handle, NetworkError> {
        let mut h = self.host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = &*h {
            return Ok(h.clone());
        }
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetworkError::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        *h = Some(handle.clone());
        Ok(handle)
    }

    fn lease(&self) -> Result<u32, NetworkError> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = free.pop_first() {
            return Ok(i);
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if *next >= self.capacity {
            return Err(NetworkError::Exhausted(self.capacity));
        }
        *next += 1;
        Ok(*next - 1)
    }

    fn release(&self, i: u32) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(i);
    }
}

/// One prepared instance network.
pub struct NetSlot {
    index: u32,
    host_ifindex: u32,
    pub host_name: String,
    pub address: Ipv4Addr,
    /// Given to an instance (counted in use).
    acquired: bool,
    fds: Option<SlotFds>,
    shared: Arc<Shared>,
}

struct SlotFds {
    netns: OwnedFd,
    tap: OwnedFd,
    nft: nft::Socket,
}

impl NetBackend for NetSlot {
    fn tap_fd(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.tap.as_raw_fd())
    }
    fn netns_fd(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.netns.as_raw_fd())
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        let fds = self.fds.take();
        let shared = self.shared.clone();
        let (index, ifindex) = (self.index, self.host_ifindex);
        if self.acquired {
            shared.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        // Deleting the host end removes the pair at once; the namespace
        // (with its TAP and rules) goes when its last descriptor closes,
        // after that. The address is leased again only then.
        let teardown = async move {
            if let Ok(host) = shared.host() {
                let _ = host.link().del(ifindex).execute().await;
            }
            drop(fds);
            shared.release(index);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(teardown);
            }
            Err(_) => {
                // No runtime (flintd is ending): the kernel frees the pair
                // with the namespace, and the lease does not matter.
            }
        }
    }
}

impl NetSlot {
    /// Installs `cfg`'s egress rules, replacing any before (one batch).
    fn apply(
        &self,
        cfg: &NetworkConfig,
        closed: &[Cidr],
        protected: &[Cidr],
    ) -> Result<(), NetworkError> {
        let Some(fds) = &self.fds else {
            return Err(NetworkError::Netlink("the namespace is gone".into()));
        };
        let mut b = Batch::new();
        b.flush_chain(TABLE, EGRESS);
        for r in cfg.egress_rules(EGRESS, closed, protected) {
            b.add_rule(TABLE, &r);
        }
        fds.nft.apply(b)
    }
}

pub struct Network {
    settings: NetworkSettings,
    shared: Arc<Shared>,
    protected: Vec<Cidr>,
    ready: Mutex<Vec<NetSlot>>,
    refilling: AtomicBool,
    prepared_total: AtomicU64,
    prepare_us_total: AtomicU64,
    host_nft: nft::Socket,
    /// Rules of functions that name a host address: the host lets them in.
    host_allowed: Mutex<Vec<EgressRule>>,
}

impl Network {
    /// Sets up the host's side (forwarding, the `flint` table), after
    /// removing whatever an earlier run left. Namespaces are prepared ahead
    /// from the first use on (in flintd's runtime).
    pub fn start(settings: NetworkSettings) -> Result<Arc<Network>, NetworkError> {
        settings.validate()?;
        // A thread and a runtime of its own: the node may be opened
        // outside any runtime.
        let s = settings.clone();
        let setup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(NetworkError::Namespace)?;
            rt.block_on(async {
                let (conn, host, _) = rtnetlink::new_connection()
                    .map_err(|e| NetworkError::Netlink(e.to_string()))?;
                tokio::spawn(conn);
                let removed = remove_leftover_links(&host, &s.link_prefix()).await?;
                if removed > 0 {
                    tracing::warn!(removed, "removed instance links left by an earlier run");
                }
                host_addresses(&host).await
            })
        });
        let addresses = setup
            .join()
            .unwrap_or_else(|_| Err(NetworkError::Netlink("the setup thread died".into())))?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward")?;
        let host_nft = nft::Socket::open()?;
        let mut del = Batch::new();
        del.del_table(&settings.host_table());
        // ENOENT: there was none.
        let _ = host_nft.apply(del);
        host_nft.apply(host_table(&settings, &[]))?;

        // Another node (or anything else) with addresses in this plan: the
        // routes back to instances would go to whichever link came first.
        let taken: Vec<String> = addresses
            .iter()
            .filter(|a| settings.instance_cidr.contains(**a))
            .map(|a| a.to_string())
            .collect();
        if !taken.is_empty() {
            tracing::warn!(
                instance_cidr = %settings.instance_cidr,
                addresses = taken.join(", "),
                "the host already has addresses in [network] instance_cidr (another flintd?); give each node a range of its own"
            );
        }
        let mut protected = vec![
            settings.instance_cidr,
            Cidr::new(Ipv4Addr::new(169, 254, 0, 0), 16),
            Cidr::new(Ipv4Addr::new(127, 0, 0, 0), 8),
            Cidr::new(Ipv4Addr::new(0, 0, 0, 0), 8),
            // Multicast, reserved and broadcast.
            Cidr::new(Ipv4Addr::new(224, 0, 0, 0), 3),
        ];
        for a in addresses {
            let c = Cidr::new(a, 32);
            if !protected.iter().any(|p| p.covers(&c)) {
                protected.push(c);
            }
        }
        let capacity = (1u64 << (32 - u32::from(settings.instance_cidr.prefix))) / 4;
        let net = Arc::new(Network {
            shared: Arc::new(Shared {
                host: Mutex::new(None),
                capacity: capacity.min(u64::from(u32::MAX)) as u32,
                free: Default::default(),
                next: Mutex::new(0),
                in_use: AtomicU32::new(0),
                names: AtomicU32::new(0),
            }),
            protected,
            ready: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            prepared_total: AtomicU64::new(0),
            prepare_us_total: AtomicU64::new(0),
            host_nft,
            host_allowed: Mutex::new(Vec::new()),
            settings,
        });
        Ok(net)
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    /// The destinations no rule that is not inside them opens.
    pub fn protected(&self) -> &[Cidr] {
        &self.protected
    }

    pub fn stats(&self) -> NetworkStats {
        let n = self.prepared_total.load(Ordering::Relaxed);
        NetworkStats {
            ready: self.ready.lock().unwrap_or_else(|p| p.into_inner()).len(),
            in_use: self.shared.in_use.load(Ordering::Relaxed),
            prepared_total: n,
            prepare_mean_us: self
                .prepare_us_total
                .load(Ordering::Relaxed)
                .checked_div(n)
                .unwrap_or(0),
        }
    }

    /// The network of a new instance of a function configured with `cfg`:
    /// none for mode `none`, else a prepared namespace (one is prepared
    /// now if none is ready) with `cfg`'s egress rules.
    pub async fn acquire(
        self: &Arc<Self>,
        cfg: &NetworkConfig,
    ) -> Result<Option<Arc<dyn NetBackend>>, NetworkError> {
        if cfg.mode == Mode::None {
            return Ok(None);
        }
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut slot = match ready {
            Some(s) => s,
            None => self.prepare().await?,
        };
        self.refill();
        self.allow_on_host(cfg)?;
        slot.apply(cfg, &[self.settings.instance_cidr], &self.protected)?;
        slot.acquired = true;
        self.shared.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Arc::new(slot)))
    }

    /// Lets `cfg`'s rules that name a host address through the host's input
    /// chain (rebuilt whole, in one batch, when the union grows).
    fn allow_on_host(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        let named: Vec<EgressRule> = cfg
            .effective()
            .into_iter()
            .filter(|r| {
                !self.settings.instance_cidr.covers(&r.cidr)
                    && self.protected.iter().any(|p| p.covers(&r.cidr))
            })
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        let mut allowed = self.host_allowed.lock().unwrap_or_else(|p| p.into_inner());
        let before = allowed.len();
        for r in named {
            if !allowed.contains(&r) {
                allowed.push(r);
            }
        }
        if allowed.len() == before {
            return Ok(());
        }
        let table = self.settings.host_table();
        let mut b = Batch::new();
        b.flush_chain(&table, "in");
        for r in host_input(&self.settings, &allowed) {
            b.add_rule(&table, &r);
        }
        self.host_nft.apply(b)
    }

    /// Prepares namespaces until `prepared` are ready (one task at a time).
    fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let net = self.clone();
        tokio::spawn(async move {
            loop {
                let have = net.ready.lock().unwrap_or_else(|p| p.into_inner()).len();
                if have >= net.settings.prepared {
                    break;
                }
                match net.prepare().await {
                    Ok(slot) => net
                        .ready
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(slot),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "preparing an instance network failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            net.refilling.store(false, Ordering::Release);
        });
    }

    /// Prepares one namespace: a thread of its own enters a new network
    /// namespace (only that thread does), makes the TAP, the veth pair,
    /// addresses, routes and the base rules, and ends.
    async fn prepare(&self) -> Result<NetSlot, NetworkError> {
        let started = Instant::now();
        let index = self.shared.lease()?;
        let name = format!(
            "{}{:x}",
            self.settings.link_prefix(),
            self.shared.names.fetch_add(1, Ordering::Relaxed)
        );
        let base = u32::from(self.settings.instance_cidr.addr) + index * 4;
        let host_addr = Ipv4Addr::from(base + 1);
        let ns_addr = Ipv4Addr::from(base + 2);
        let dns = self.settings.dns;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("flint-netns".into())
            .spawn(move || {
                let _ = tx.send(prepare_in_thread(&thread_name, host_addr, ns_addr, dns));
            });
        let result = match spawned {
            Ok(_) => rx
                .await
                .unwrap_or_else(|_| Err(NetworkError::Netlink("the namespace thread died".into()))),
            Err(e) => Err(NetworkError::Namespace(e)),
        };
        let (fds, host_ifindex) = match result {
            Ok(r) => r,
            Err(e) => {
                // A half-made pair goes with its name.
                if let Ok(host) = self.shared.host() {
                    if let Ok(Some(i)) = link_index(&host, &name).await {
                        let _ = host.link().del(i).execute().await;
                    }
                }
                self.shared.release(index);
                return Err(e);
            }
        };
        self.prepared_total.fetch_add(1, Ordering::Relaxed);
        self.prepare_us_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(NetSlot {
            index,
            host_ifindex,
            host_name: name,
            address: ns_addr,
            acquired: false,
            fds: Some(fds),
            shared: self.shared.clone(),
        })
    }

    /// Frees the prepared namespaces and removes the host's table.
    pub async fn shutdown(&self) {
        let ready = std::mem::take(&mut *self.ready.lock().unwrap_or_else(|p| p.into_inner()));
        if let Ok(host) = self.shared.host() {
            for slot in &ready {
                let _ = host.link().del(slot.host_ifindex).execute().await;
            }
        }
        drop(ready);
        let mut del = Batch::new();
        del.del_table(&self.settings.host_table());
        let _ = self.host_nft.apply(del);
    }
}

impl Drop for Network {
    /// A node that goes without [`Network::shutdown`] (dropped in a test,
    /// or ending on an error) still removes its table; its namespaces go
    /// with their descriptors.
    fn drop(&mut self) {
        let mut del = Batch::new();
        del.del_table(&self.settings.host_table());
        let _ = self.host_nft.apply(del);
    }
}

/// The host's table: masquerade instance traffic leaving by another
/// interface, never forward between two instances, and let an instance
/// reach the host itself only with replies, the resolver (when it is a host
/// address) and what a function's rule names explicitly (`allowed`, the
/// union over functions: each instance's own namespace already holds it to
/// its function's rules).
fn host_table(s: &NetworkSettings, allowed: &[EgressRule]) -> Batch {
    let prefix = s.link_prefix();
    let out_fl = |not| Match::Oif {
        name: prefix.clone(),
        prefix: true,
        not,
    };
    let table = s.host_table();
    let mut b = Batch::new();
    b.add_table(&table);
    for c in [
        Chain {
            name: "post",
            base: Some(("nat", Hook::Postrouting, 100, true)),
        },
        Chain {
            name: "fwd",
            base: Some(("filter", Hook::Forward, 0, true)),
        },
        Chain {
            name: "in",
            base: Some(("filter", Hook::Input, 0, true)),
        },
    ] {
        b.add_chain(&table, &c);
    }
    let rules = [
        Rule {
            chain: "post",
            matches: vec![Match::Saddr(s.instance_cidr), out_fl(true)],
            verdict: Verdict::Masquerade,
        },
        Rule {
            chain: "fwd",
            matches: vec![
                Match::Iif {
                    name: prefix.clone(),
                    prefix: true,
                    not: false,
                },
                out_fl(false),
            ],
            verdict: Verdict::Drop,
        },
    ];
    for r in &rules {
        b.add_rule(&table, r);
    }
    for r in host_input(s, allowed) {
        b.add_rule(&table, &r);
    }
    b
}

/// The host's input chain (see [`host_table`]).
fn host_input(s: &NetworkSettings, allowed: &[EgressRule]) -> Vec<Rule> {
    let fl = || Match::Iif {
        name: s.link_prefix(),
        prefix: true,
        not: false,
    };
    let mut rules = vec![Rule {
        chain: "in",
        matches: vec![fl(), Match::Established],
        verdict: Verdict::Accept,
    }];
    if let Some(dns) = s.dns {
        for proto in [17, 6] {
            rules.push(Rule {
                chain: "in",
                matches: vec![
                    fl(),
                    Match::Daddr(Cidr::new(dns, 32)),
                    Match::L4proto(proto),
                    Match::Dport(53, 53),
                ],
                verdict: Verdict::Accept,
            });
        }
    }
    for a in allowed {
        let mut matches = vec![fl()];
        matches.extend(a.matches());
        rules.push(Rule {
            chain: "in",
            matches,
            verdict: Verdict::Accept,
        });
    }
    rules.push(Rule {
        chain: "in",
        matches: vec![fl()],
        verdict: Verdict::Drop,
    });
    rules
}

/// A namespace's base table: SNAT of the guest, DNAT of the resolver, and
/// the forward chain (replies, the resolver, then the function's `egress`
/// chain; everything else dropped). Nothing reaches the namespace itself.
fn namespace_table(ns_addr: Ipv4Addr, dns: Option<Ipv4Addr>) -> Batch {
    let tap = || Match::Iif {
        name: TAP.into(),
        prefix: false,
        not: false,
    };
    let mut b = Batch::new();
    b.add_table(TABLE);
    for c in [
        Chain {
            name: "pre",
            base: Some(("nat", Hook::Prerouting, -100, true)),
        },
        Chain {
            name: "post",
            base: Some(("nat", Hook::Postrouting, 100, true)),
        },
        Chain {
            name: EGRESS,
            base: None,
        },
        Chain {
            name: "fwd",
            base: Some(("filter", Hook::Forward, 0, false)),
        },
        Chain {
            name: "in",
            base: Some(("filter", Hook::Input, 0, false)),
        },
    ] {
        b.add_chain(TABLE, &c);
    }
    let mut rules = Vec::new();
    if let Some(dns) = dns {
        for proto in [17, 6] {
            rules.push(Rule {
                chain: "pre",
                matches: vec![
                    tap(),
                    Match::Daddr(Cidr::new(GATEWAY, 32)),
                    Match::L4proto(proto),
                    Match::Dport(53, 53),
                ],
                verdict: Verdict::Dnat(dns, 53),
            });
        }
    }
    rules.push(Rule {
        chain: "post",
        matches: vec![Match::Oif {
            name: UPLINK.into(),
            prefix: false,
            not: false,
        }],
        verdict: Verdict::Snat(ns_addr),
    });
    rules.push(Rule {
        chain: "fwd",
        matches: vec![Match::Established],
        verdict: Verdict::Accept,
    });
    rules.push(Rule {
        chain: "fwd",
        matches: vec![tap(), Match::DstNatted],
        verdict: Verdict::Accept,
    });
    rules.push(Rule {
        chain: "fwd",
        matches: vec![
            tap(),
            Match::Oif {
                name: UPLINK.into(),
                prefix: false,
                not: false,
            },
        ],
        verdict: Verdict::Jump(EGRESS),
    });
    rules.push(Rule {
        chain: "in",
        matches: vec![Match::Established],
        verdict: Verdict::Accept,
    });
    for r in &rules {
        b.add_rule(TABLE, r);
    }
    b
}

fn write_sysctl(path: &'static str) -> Result<(), NetworkError> {
    std::fs::write(path, "1").map_err(|e| NetworkError::Sysctl(path, e))
}

/// Runs on a thread of its own, which it moves into a new network
/// namespace: nothing else may run on it afterwards.
fn prepare_in_thread(
    name: &str,
    host_addr: Ipv4Addr,
    ns_addr: Ipv4Addr,
    dns: Option<Ipv4Addr>,
) -> Result<(SlotFds, u32), NetworkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(NetworkError::Namespace)?;
    let _entered = rt.enter();
    // Opened before the move: this one edits the host's namespace.
    let (conn, host, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Netlink(e.to_string()))?;
    rt.spawn(conn);
    // SAFETY: unshare(2) with a constant flag; it changes only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        return Err(NetworkError::Namespace(std::io::Error::last_os_error()));
    }
    let netns = open_cloexec(c"/proc/thread-self/ns/net").map_err(NetworkError::Namespace)?;
    let (conn, ns, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Netlink(e.to_string()))?;
    rt.spawn(conn);
    let nft = nft::Socket::open()?;
    let tap = open_tap(TAP).map_err(NetworkError::Tap)?;
    // In this thread's namespace.
    write_sysctl("/proc/sys/net/ipv4/ip_forward")?;
    let host_ifindex = rt.block_on(async {
        let peer = LinkUnspec::new_with_name(UPLINK)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        host.link().add(veth).execute().await?;
        let h = link_index(&host, name)
            .await?
            .ok_or_else(|| NetworkError::Netlink(format!("{name} vanished")))?;
        host.address()
            .add(h, IpAddr::V4(host_addr), 30)
            .execute()
            .await?;
        host.link()
            .set(LinkUnspec::new_with_index(h).up().build())
            .execute()
            .await?;
        let index = |n: &'static str| {
            let ns = ns.clone();
            async move {
                link_index(&ns, n)
                    .await?
                    .ok_or_else(|| NetworkError::Netlink(format!("no {n} in the namespace")))
            }
        };
        let (lo, up, tp) = (index("lo").await?, index(UPLINK).await?, index(TAP).await?);
        ns.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await?;
        ns.address()
            .add(up, IpAddr::V4(ns_addr), 30)
            .execute()
            .await?;
        ns.link()
            .set(LinkUnspec::new_with_index(up).up().build())
            .execute()
            .await?;
        ns.link()
            .set(
                LinkUnspec::new_with_index(tp)
                    .address(TAP_MAC.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await?;
        ns.address()
            .add(tp, IpAddr::V4(GATEWAY), GUEST_PREFIX)
            .execute()
            .await?;
        ns.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(host_addr)
                    .build(),
            )
            .execute()
            .await?;
        Ok::<_, NetworkError>(h)
    })?;
    nft.apply(namespace_table(ns_addr, dns))?;
    Ok((SlotFds { netns, tap, nft }, host_ifindex))
}

fn open_cloexec(path: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: open(2) reads a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Creates the TAP device `name` in the calling thread's namespace; it
/// lives while a descriptor of it is open.
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: open(2) reads a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2); nothing else owns it.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads a valid, NUL-terminated ifreq that outlives
    // the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tap)
}

async fn link_index(h: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Host links named like an instance's, left by a run that crashed.
async fn remove_leftover_links(h: &rtnetlink::Handle, prefix: &str) -> Result<usize, NetworkError> {
    let mut links = h.link().get().execute();
    let mut doomed = Vec::new();
    while let Some(l) = links.try_next().await? {
        let named = l.attributes.iter().any(|a| match a {
            LinkAttribute::IfName(n) => n.starts_with(prefix),
            _ => false,
        });
        if named {
            doomed.push(l.header.index);
        }
    }
    for &i in &doomed {
        let _ = h.link().del(i).execute().await;
    }
    Ok(doomed.len())
}

/// The host's own IPv4 addresses.
async fn host_addresses(h: &rtnetlink::Handle) -> Result<Vec<Ipv4Addr>, NetworkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        for attr in a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(v4))
            | AddressAttribute::Address(IpAddr::V4(v4)) = attr
            {
                if !out.contains(&v4) {
                    out.push(v4);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_links(prefix: &str) -> usize {
        std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A real namespace, veth pair, TAP and tables (flintd runs as root on
    /// every machine this suite runs on).
    #[tokio::test]
    async fn a_namespace_is_prepared_used_and_torn_down() {
        let settings = NetworkSettings {
            instance_cidr: Cidr::parse("10.201.0.0/24").unwrap(),
            dns: Some(Ipv4Addr::new(198, 51, 100, 53)),
            prepared: 1,
            tag: "ut".into(),
            ..Default::default()
        };
        let net = Network::start(settings).expect("network");
        let slot = net
            .acquire(&NetworkConfig {
                mode: Mode::Egress,
                egress: vec![EgressRule::parse("198.51.100.0/24,tcp,80").unwrap()],
            })
            .await
            .expect("acquire")
            .expect("a slot");
        assert!(slot.tap_fd() >= 0 && slot.netns_fd() >= 0);
        assert!(net
            .acquire(&NetworkConfig {
                mode: Mode::None,
                egress: vec![]
            })
            .await
            .unwrap()
            .is_none());
        // The refill prepares one more ahead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.stats().ready < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(net.stats().ready, 1);
        assert_eq!(host_links("flut-"), 2);
        assert_eq!(net.stats().in_use, 1);
        let tables = nft::Socket::open().unwrap().tables().unwrap();
        assert!(tables.contains(&"flint-ut".to_string()), "{tables:?}");
        drop(slot);
        net.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while host_links("flut-") > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(host_links("flut-"), 0);
        let tables = nft::Socket::open().unwrap().tables().unwrap();
        assert!(!tables.contains(&"flint-ut".to_string()), "{tables:?}");
    }
}
