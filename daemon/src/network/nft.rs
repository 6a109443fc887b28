//! A small nftables encoder: the netlink messages of `nf_tables` that
//! Flint needs, sent as one atomic batch on a `NETLINK_NETFILTER` socket,
//! with no `nft` process and no C library.
//!
//! The format (from the kernel's `include/uapi/linux/netfilter/nf_tables.h`
//! and `nfnetlink.h`):
//! - every message is a netlink header, then `nfgenmsg` (family, version
//!   0, resource id), then attributes;
//! - a batch is `NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`;
//!   the kernel applies it whole or not at all, and acknowledges each
//!   message that asks for it (`NLM_F_ACK`) or reports its error;
//! - numbers in attributes are big-endian, except the values that the
//!   kernel keeps in host order (conntrack state and status bits);
//! - a rule is a list of expressions, each a name and its attributes,
//!   working on registers: `payload`/`meta`/`ct` load into a register,
//!   `bitwise` masks it, `cmp` ends the rule when it does not match,
//!   `immediate` sets a register or the verdict, `nat`/`masq` translate.
//!
//! The socket belongs to the network namespace it was opened in: one
//! opened inside an instance's namespace edits that namespace's tables.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Cidr, NetworkError};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;

/// `NFPROTO_IPV4`: tables of the `ip` family.
const FAMILY_IP: u8 = 2;

// Attribute numbers.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

/// Netfilter hooks (`NF_INET_*`).
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Postrouting = 4,
}

/// What a rule does when all its matches hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(&'static str),
    /// Source NAT to one address (`snat to A`).
    Snat(Ipv4Addr),
    /// Destination NAT to an address and port (`dnat to A:P`); the rule
    /// must match a transport protocol.
    Dnat(Ipv4Addr, u16),
    Masquerade,
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The input interface's name is this (exactly), or starts with it
    /// when `prefix`.
    Iif {
        name: String,
        prefix: bool,
        not: bool,
    },
    Oif {
        name: String,
        prefix: bool,
        not: bool,
    },
    Saddr(Cidr),
    Daddr(Cidr),
    /// `meta l4proto` (6 TCP, 17 UDP).
    L4proto(u8),
    /// The transport header's destination port in `lo..=hi`.
    Dport(u16, u16),
    /// `ct state established,related`.
    Established,
    /// `ct status dnat`: the connection's destination was translated here.
    DstNatted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

/// A chain: with a hook it is a base chain (type, hook, priority, policy),
/// without one it is a regular chain that base chains jump to.
#[derive(Debug, Clone)]
pub struct Chain {
    pub name: &'static str,
    /// (`"filter"` or `"nat"`, hook, priority, policy accepts)
    pub base: Option<(&'static str, Hook, i32, bool)>,
}

/// Messages of one atomic batch.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Messages that ask for an acknowledgement.
    acked: u32,
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Batch::default();
        b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, |_| {});
        b
    }

    /// Adds the table `table` (family `ip`); nothing if it exists.
    pub fn add_table(&mut self, table: &str) {
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| {
            m.str(NFTA_TABLE_NAME, table)
        });
    }

    /// Deletes the table `table` and everything in it.
    pub fn del_table(&mut self, table: &str) {
        self.nft(NFT_MSG_DELTABLE, 0, |m| m.str(NFTA_TABLE_NAME, table));
    }

    pub fn add_chain(&mut self, table: &str, chain: &Chain) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |m| {
            m.str(NFTA_CHAIN_TABLE, table);
            m.str(NFTA_CHAIN_NAME, chain.name);
            if let Some((kind, hook, priority, accept)) = chain.base {
                m.nested(NFTA_CHAIN_HOOK, |h| {
                    h.u32(NFTA_HOOK_HOOKNUM, hook as u32);
                    h.u32(NFTA_HOOK_PRIORITY, priority as u32);
                });
                m.u32(NFTA_CHAIN_POLICY, u32::from(accept));
                m.str(NFTA_CHAIN_TYPE, kind);
            }
        });
    }

    /// Deletes every rule of `chain`.
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        self.nft(NFT_MSG_DELRULE, 0, |m| {
            m.str(NFTA_RULE_TABLE, table);
            m.str(NFTA_RULE_CHAIN, chain);
        });
    }

    /// Appends `rule` to its chain.
    pub fn add_rule(&mut self, table: &str, rule: &Rule) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |m| {
            m.str(NFTA_RULE_TABLE, table);
            m.str(NFTA_RULE_CHAIN, rule.chain);
            m.nested(NFTA_RULE_EXPRESSIONS, |list| {
                for mat in &rule.matches {
                    encode_match(list, mat);
                }
                encode_verdict(list, &rule.verdict);
            });
        });
    }

    fn nft(&mut self, msg: u16, flags: u16, attrs: impl FnOnce(&mut Attrs)) {
        self.acked += 1;
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, FAMILY_IP, attrs);
    }

    fn message(&mut self, kind: u16, flags: u16, family: u8, attrs: impl FnOnce(&mut Attrs)) {
        self.seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 16]);
        // nfgenmsg: the batch markers carry the subsystem as resource id.
        let res_id = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        };
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        let mut a = Attrs(std::mem::take(&mut self.buf));
        attrs(&mut a);
        self.buf = a.0;
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
        self.buf[start + 6..start + 8].copy_from_slice(&flags.to_ne_bytes());
        self.buf[start + 8..start + 12].copy_from_slice(&self.seq.to_ne_bytes());
    }

    /// The batch's bytes, closed.
    fn finish(mut self) -> (Vec<u8>, u32) {
        self.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, |_| {});
        (self.buf, self.acked)
    }
}

/// Netlink attributes being written (4-byte aligned).
struct Attrs(Vec<u8>);

impl Attrs {
    fn raw(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.raw(kind, &v);
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.raw(kind, &v.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        inner(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// One expression of a rule.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) {
        self.nested(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nested(NFTA_EXPR_DATA, data);
        });
    }

    fn value(&mut self, kind: u16, bytes: &[u8]) {
        self.nested(kind, |d| d.raw(NFTA_DATA_VALUE, bytes));
    }
}

// Expression attributes.
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_GTE: u32 = 5;
const NFT_CMP_LTE: u32 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// `IPS_DST_NAT`.
const IPS_DST_NAT: u32 = 0x20;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_SNAT: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;
/// Verdict codes (`NF_DROP`, `NF_ACCEPT`, `NFT_JUMP`).
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;

fn cmp(a: &mut Attrs, op: u32, data: &[u8]) {
    a.expr("cmp", |c| {
        c.u32(NFTA_CMP_SREG, NFT_REG_1);
        c.u32(NFTA_CMP_OP, op);
        c.value(NFTA_CMP_DATA, data);
    });
}

fn payload(a: &mut Attrs, base: u32, offset: u32, len: u32) {
    a.expr("payload", |p| {
        p.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        p.u32(NFTA_PAYLOAD_BASE, base);
        p.u32(NFTA_PAYLOAD_OFFSET, offset);
        p.u32(NFTA_PAYLOAD_LEN, len);
    });
}

fn bitwise(a: &mut Attrs, mask: &[u8]) {
    a.expr("bitwise", |b| {
        b.u32(NFTA_BITWISE_SREG, NFT_REG_1);
        b.u32(NFTA_BITWISE_DREG, NFT_REG_1);
        b.u32(NFTA_BITWISE_LEN, mask.len() as u32);
        b.value(NFTA_BITWISE_MASK, mask);
        b.value(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
    });
}

fn meta(a: &mut Attrs, key: u32) {
    a.expr("meta", |m| {
        m.u32(NFTA_META_DREG, NFT_REG_1);
        m.u32(NFTA_META_KEY, key);
    });
}

fn ct_bits(a: &mut Attrs, key: u32, bits: u32) {
    a.expr("ct", |c| {
        c.u32(NFTA_CT_DREG, NFT_REG_1);
        c.u32(NFTA_CT_KEY, key);
    });
    // Conntrack keeps these in host order.
    bitwise(a, &bits.to_ne_bytes());
    cmp(a, NFT_CMP_NEQ, &0u32.to_ne_bytes());
}

fn ifname(a: &mut Attrs, key: u32, name: &str, prefix: bool, not: bool) {
    meta(a, key);
    let op = if not { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    let data = if prefix {
        name.as_bytes().to_vec()
    } else {
        // IFNAMSIZ bytes, zero-padded: an exact match.
        let mut v = name.as_bytes().to_vec();
        v.resize(16, 0);
        v
    };
    cmp(a, op, &data);
}

fn addr(a: &mut Attrs, offset: u32, c: &Cidr) {
    if c.prefix == 0 {
        return;
    }
    payload(a, NFT_PAYLOAD_NETWORK_HEADER, offset, 4);
    if c.prefix < 32 {
        bitwise(a, &c.mask().octets());
    }
    cmp(a, NFT_CMP_EQ, &c.addr.octets());
}

fn encode_match(a: &mut Attrs, m: &Match) {
    match m {
        Match::Iif { name, prefix, not } => ifname(a, NFT_META_IIFNAME, name, *prefix, *not),
        Match::Oif { name, prefix, not } => ifname(a, NFT_META_OIFNAME, name, *prefix, *not),
        Match::Saddr(c) => addr(a, 12, c),
        Match::Daddr(c) => addr(a, 16, c),
        Match::L4proto(p) => {
            meta(a, NFT_META_L4PROTO);
            cmp(a, NFT_CMP_EQ, &[*p]);
        }
        Match::Dport(lo, hi) => {
            payload(a, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            if lo == hi {
                cmp(a, NFT_CMP_EQ, &lo.to_be_bytes());
            } else {
                // Big-endian bytes compare as the numbers do.
                cmp(a, NFT_CMP_GTE, &lo.to_be_bytes());
                cmp(a, NFT_CMP_LTE, &hi.to_be_bytes());
            }
        }
        Match::Established => ct_bits(a, NFT_CT_STATE, CT_ESTABLISHED_RELATED),
        Match::DstNatted => ct_bits(a, NFT_CT_STATUS, IPS_DST_NAT),
    }
}

fn immediate(a: &mut Attrs, reg: u32, bytes: &[u8]) {
    a.expr("immediate", |i| {
        i.u32(NFTA_IMMEDIATE_DREG, reg);
        i.value(NFTA_IMMEDIATE_DATA, bytes);
    });
}

fn verdict(a: &mut Attrs, code: i32, chain: Option<&str>) {
    a.expr("immediate", |i| {
        i.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        i.nested(NFTA_IMMEDIATE_DATA, |d| {
            d.nested(NFTA_DATA_VERDICT, |v| {
                v.u32(NFTA_VERDICT_CODE, code as u32);
                if let Some(c) = chain {
                    v.str(NFTA_VERDICT_CHAIN, c);
                }
            });
        });
    });
}

fn encode_verdict(a: &mut Attrs, v: &Verdict) {
    match v {
        Verdict::Accept => verdict(a, NF_ACCEPT, None),
        Verdict::Drop => verdict(a, NF_DROP, None),
        Verdict::Jump(chain) => verdict(a, NFT_JUMP, Some(chain)),
        Verdict::Snat(addr) => {
            immediate(a, NFT_REG_1, &addr.octets());
            a.expr("nat", |n| {
                n.u32(NFTA_NAT_TYPE, NFT_NAT_SNAT);
                n.u32(NFTA_NAT_FAMILY, u32::from(FAMILY_IP));
                n.u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            });
        }
        Verdict::Dnat(addr, port) => {
            immediate(a, NFT_REG_1, &addr.octets());
            immediate(a, NFT_REG_2, &port.to_be_bytes());
            a.expr("nat", |n| {
                n.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                n.u32(NFTA_NAT_FAMILY, u32::from(FAMILY_IP));
                n.u32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
                n.u32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2);
            });
        }
        Verdict::Masquerade => a.nested(NFTA_LIST_ELEM, |e| e.str(NFTA_EXPR_NAME, "masq")),
    }
}

/// A `NETLINK_NETFILTER` socket, bound to the network namespace of the
/// thread that opened it.
pub struct Socket(OwnedFd);

impl Socket {
    pub fn open() -> Result<Self, NetworkError> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(NetworkError::Nft(std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2); nothing else owns it.
        let sock = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt(2) reads a timeval that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                sock.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(NetworkError::Nft(std::io::Error::last_os_error()));
        }
        Ok(sock)
    }

    /// Sends `batch` and waits for the kernel's verdict on all of it: the
    /// first error of a message, or success.
    pub fn apply(&self, batch: Batch) -> Result<(), NetworkError> {
        let (bytes, mut expected) = batch.finish();
        // SAFETY: send(2) reads `bytes`, alive for the call.
        let rc = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if rc < 0 {
            return Err(NetworkError::Nft(std::io::Error::last_os_error()));
        }
        let mut first_error = None;
        let mut buf = vec![0u8; 65536];
        while expected > 0 {
            let flags = if first_error.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            // SAFETY: recv(2) writes at most buf.len() bytes into buf.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                if first_error.is_some() {
                    break;
                }
                return Err(NetworkError::Nft(std::io::Error::last_os_error()));
            }
            for (kind, msg) in Messages(&buf[..n as usize]) {
                if kind == NLMSG_ERROR && msg.len() >= 20 {
                    let errno = i32::from_ne_bytes(msg[16..20].try_into().unwrap_or_default());
                    expected = expected.saturating_sub(1);
                    if errno != 0 && first_error.is_none() {
                        first_error = Some(std::io::Error::from_raw_os_error(-errno));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(NetworkError::Nft(e)),
            None => Ok(()),
        }
    }

    /// The names of the `ip` tables in this socket's namespace (a dump of
    /// `NFT_MSG_GETTABLE`): what operators and tests count.
    pub fn tables(&self) -> Result<Vec<String>, NetworkError> {
        const NLM_F_DUMP: u16 = 0x300;
        const NLMSG_DONE: u16 = 3;
        let mut req = [0u8; 20];
        req[0..4].copy_from_slice(&20u32.to_ne_bytes());
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | 1; // NFT_MSG_GETTABLE
        req[4..6].copy_from_slice(&kind.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[16] = FAMILY_IP;
        // SAFETY: send(2) reads `req`, alive for the call.
        if unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(NetworkError::Nft(std::io::Error::last_os_error()));
        }
        let mut names = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: recv(2) writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(NetworkError::Nft(std::io::Error::last_os_error()));
            }
            for (kind, msg) in Messages(&buf[..n as usize]) {
                if kind == NLMSG_DONE || kind == NLMSG_ERROR {
                    return Ok(names);
                }
                // Attributes after the header and nfgenmsg.
                let mut attrs = &msg[20.min(msg.len())..];
                while attrs.len() >= 4 {
                    let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                    let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if atype == NFTA_TABLE_NAME {
                        let v = &attrs[4..alen];
                        let v = v.split(|b| *b == 0).next().unwrap_or_default();
                        names.push(String::from_utf8_lossy(v).into_owned());
                    }
                    attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
                }
            }
        }
    }
}

/// The netlink messages in a buffer the kernel filled: `(type, message)`
/// pairs, header included; it stops at the first length that does not fit.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0;
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        if len < 16 || len > rest.len() {
            self.0 = &[];
            return None;
        }
        self.0 = &rest[len.next_multiple_of(4).min(rest.len())..];
        Some((kind, &rest[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_framed_and_aligned() {
        let mut b = Batch::new();
        b.add_table("flint");
        b.add_rule(
            "flint",
            &Rule {
                chain: "fwd",
                matches: vec![
                    Match::Daddr(Cidr::parse("10.0.0.0/8").unwrap()),
                    Match::L4proto(6),
                    Match::Dport(80, 443),
                ],
                verdict: Verdict::Accept,
            },
        );
        let (bytes, acked) = b.finish();
        assert_eq!(acked, 2);
        // Walk the messages: each length is aligned and they add up.
        let mut off = 0;
        let mut kinds = vec![];
        while off < bytes.len() {
            let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes(
                bytes[off + 4..off + 6].try_into().unwrap(),
            ));
            assert_eq!(len % 4, 0);
            off += len;
        }
        assert_eq!(off, bytes.len());
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                (10 << 8) | NFT_MSG_NEWTABLE,
                (10 << 8) | NFT_MSG_NEWRULE,
                NFNL_MSG_BATCH_END
            ]
        );
    }
}
