//! A function's network configuration (stored with the function, fixed in
//! a published version) and the nftables rules it becomes.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::nft::{Match, Rule, Verdict};
use super::NetworkError;

/// An IPv4 network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Cidr { addr, prefix }
    }

    /// `A.B.C.D/N` (or a bare address: `/32`). Host bits must be zero.
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        let bad = || NetworkError::Invalid(format!("{s:?} is not an IPv4 CIDR (A.B.C.D/N)"));
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if p > 32 {
            return Err(bad());
        }
        let c = Cidr { addr, prefix: p };
        if u32::from(addr) & !u32::from(c.mask()) != 0 {
            return Err(NetworkError::Invalid(format!(
                "{s:?} has host bits set (did you mean {}/{p}?)",
                Ipv4Addr::from(u32::from(addr) & u32::from(c.mask()))
            )));
        }
        Ok(c)
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & u32::from(self.mask()) == u32::from(self.addr)
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Cidr::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No network traffic at all (the NIC exists, nothing is behind it).
    None,
    /// Outbound traffic as the egress rules allow.
    #[default]
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    All,
    Tcp,
    Udp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Egress => "egress",
        }
    }

    /// `egress` (or empty) or `none`.
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        match s {
            "" | "egress" => Ok(Mode::Egress),
            "none" => Ok(Mode::None),
            m => Err(NetworkError::Invalid(format!(
                "mode {m:?}: expected egress or none"
            ))),
        }
    }
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::All => "all",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// `tcp`, `udp`, or `all` (also empty and `-1`, as security groups
    /// write it).
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        match s {
            "" | "all" | "-1" => Ok(Protocol::All),
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            p => Err(NetworkError::Invalid(format!(
                "protocol {p:?}: expected tcp, udp or all"
            ))),
        }
    }
}

/// One allowed destination, as a security group's outbound rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    pub cidr: Cidr,
    #[serde(default)]
    pub protocol: Protocol,
    /// `(from, to)`, inclusive; `None`: every port.
    #[serde(default)]
    pub ports: Option<(u16, u16)>,
}

impl EgressRule {
    /// `CIDR[,tcp|udp|all[,PORT|FROM-TO]]`, e.g. `10.0.0.0/8,tcp,443`.
    pub fn parse(s: &str) -> Result<Self, NetworkError> {
        let mut parts = s.split(',').map(str::trim);
        let cidr = Cidr::parse(parts.next().unwrap_or(""))?;
        let protocol = Protocol::parse(parts.next().unwrap_or(""))?;
        let ports = match parts.next() {
            None => None,
            Some(p) => {
                let bad = || NetworkError::Invalid(format!("ports {p:?}: expected N or N-M"));
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                Some((
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                ))
            }
        };
        if parts.next().is_some() {
            return Err(NetworkError::Invalid(format!(
                "{s:?}: expected CIDR[,PROTOCOL[,PORTS]]"
            )));
        }
        let r = EgressRule {
            cidr,
            protocol,
            ports,
        };
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<(), NetworkError> {
        if let Some((lo, hi)) = self.ports {
            if self.protocol == Protocol::All {
                return Err(NetworkError::Invalid(
                    "ports need a protocol (tcp or udp)".into(),
                ));
            }
            if lo == 0 || lo > hi {
                return Err(NetworkError::Invalid(format!(
                    "port range {lo}-{hi}: expected 1 <= from <= to"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn matches(&self) -> Vec<Match> {
        let mut m = vec![Match::Daddr(self.cidr)];
        match self.protocol {
            Protocol::All => {}
            Protocol::Tcp => m.push(Match::L4proto(6)),
            Protocol::Udp => m.push(Match::L4proto(17)),
        }
        if let Some((lo, hi)) = self.ports {
            m.push(Match::Dport(lo, hi));
        }
        m
    }
}

impl std::fmt::Display for EgressRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cidr)?;
        if self.protocol != Protocol::All {
            write!(f, ",{}", self.protocol.name())?;
        }
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, ",{lo}"),
            Some((lo, hi)) => write!(f, ",{lo}-{hi}"),
            None => Ok(()),
        }
    }
}

/// At most this many egress rules per function (a security group's
/// default limit).
pub const MAX_RULES: usize = 60;

/// A function's network: `Mode` and, for `egress`, the allowed
/// destinations (none given: every public destination).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), NetworkError> {
        if self.mode == Mode::None && !self.egress.is_empty() {
            return Err(NetworkError::Invalid(
                "mode none takes no egress rules".into(),
            ));
        }
        if self.egress.len() > MAX_RULES {
            return Err(NetworkError::Invalid(format!(
                "{} egress rules: at most {MAX_RULES}",
                self.egress.len()
            )));
        }
        self.egress.iter().try_for_each(EgressRule::validate)
    }

    /// The rules in force: those given, or "everything" when none are.
    pub fn effective(&self) -> Vec<EgressRule> {
        if self.egress.is_empty() {
            vec![EgressRule {
                cidr: Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
                protocol: Protocol::All,
                ports: None,
            }]
        } else {
            self.egress.clone()
        }
    }

    /// The egress chain of an instance's namespace. Destinations in
    /// `protected` (the host, the other instances, link-local, loopback,
    /// multicast) are dropped unless a rule names a network inside one of
    /// them: "everything" (`0.0.0.0/0`) never opens the host. Destinations
    /// in `closed` (the instances' own range) no rule opens.
    pub fn egress_rules(
        &self,
        chain: &'static str,
        closed: &[Cidr],
        protected: &[Cidr],
    ) -> Vec<Rule> {
        let rules = self.effective();
        let inside = |r: &EgressRule| protected.iter().any(|p| p.covers(&r.cidr));
        let accept = |r: &EgressRule| Rule {
            chain,
            matches: r.matches(),
            verdict: Verdict::Accept,
        };
        let mut out: Vec<Rule> = closed
            .iter()
            .map(|c| Rule {
                chain,
                matches: vec![Match::Daddr(*c)],
                verdict: Verdict::Drop,
            })
            .collect();
        out.extend(rules.iter().filter(|r| inside(r)).map(accept));
        out.extend(protected.iter().map(|p| Rule {
            chain,
            matches: vec![Match::Daddr(*p)],
            verdict: Verdict::Drop,
        }));
        out.extend(rules.iter().filter(|r| !inside(r)).map(accept));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_cover() {
        let c = Cidr::parse("10.200.0.0/16").unwrap();
        assert!(c.contains("10.200.3.4".parse().unwrap()));
        assert!(!c.contains("10.201.0.1".parse().unwrap()));
        assert!(c.covers(&Cidr::parse("10.200.1.0/24").unwrap()));
        assert!(!c.covers(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
        assert!(Cidr::parse("10.0.0.1/8").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert_eq!(
            Cidr::parse("0.0.0.0/0").unwrap().mask(),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn rules_parse_and_print() {
        let r = EgressRule::parse("198.51.100.0/24,tcp,8000-8080").unwrap();
        assert_eq!(r.ports, Some((8000, 8080)));
        assert_eq!(r.to_string(), "198.51.100.0/24,tcp,8000-8080");
        assert!(EgressRule::parse("1.2.3.4/32,all,80").is_err());
        assert!(EgressRule::parse("1.2.3.4/32,tcp,90-80").is_err());
        assert!(EgressRule::parse("1.2.3.4/32,icmp").is_err());
        assert!(EgressRule::parse("1.2.3.4/32,tcp,0").is_err());
    }

    #[test]
    fn everything_does_not_open_protected_ranges_but_a_named_host_does() {
        let host = Cidr::parse("192.0.2.2/32").unwrap();
        let protected = [Cidr::parse("10.200.0.0/16").unwrap(), host];
        let open = NetworkConfig::default().egress_rules("e", &[], &protected);
        // The drops come first, then "everything".
        assert_eq!(open[0].verdict, Verdict::Drop);
        assert_eq!(open[1].verdict, Verdict::Drop);
        assert_eq!(open[2].verdict, Verdict::Accept);
        let named = NetworkConfig {
            mode: Mode::Egress,
            egress: vec![EgressRule::parse("192.0.2.2/32,tcp,8080").unwrap()],
        };
        let rules = named.egress_rules("e", &[], &protected);
        assert_eq!(rules[0].verdict, Verdict::Accept);
        assert!(rules[0].matches.contains(&Match::Dport(8080, 8080)));
        // The instances' range stays closed whatever a rule says.
        let instances = NetworkConfig {
            mode: Mode::Egress,
            egress: vec![EgressRule::parse("10.200.0.0/24").unwrap()],
        };
        let rules = instances.egress_rules("e", &[protected[0]], &protected);
        assert_eq!(rules[0].matches, vec![Match::Daddr(protected[0])]);
        assert_eq!(rules[0].verdict, Verdict::Drop);
    }

    #[test]
    fn none_takes_no_rules() {
        let c = NetworkConfig {
            mode: Mode::None,
            egress: vec![EgressRule::parse("1.1.1.1").unwrap()],
        };
        assert!(c.validate().is_err());
    }
}
