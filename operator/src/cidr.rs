//! CIDR arithmetic for cluster-pool IPAM: parsing prefixes, and a pool that hands out equal-sized
//! sub-prefixes of one cluster prefix (the n-th /mask of the pool), remembering which are taken.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP prefix in canonical form (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN`; host bits must be zero so the prefix means exactly one thing.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} in {s:?} is not an IP address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("prefix length {len:?} in {s:?} is not a number"))?;
        let bits = family_bits(addr);
        if prefix > bits {
            return Err(format!("prefix length {prefix} in {s:?} is longer than {bits}"));
        }
        let cidr = Cidr { addr, prefix };
        if to_u128(addr) & !mask_u128(prefix, bits) != 0 {
            return Err(format!("{s:?} has host bits set (did you mean {}?)", cidr.network()));
        }
        Ok(cidr)
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    fn bits(&self) -> u8 {
        family_bits(self.addr)
    }

    /// The same prefix with host bits cleared.
    pub fn network(&self) -> Cidr {
        let bits = self.bits();
        Cidr {
            addr: from_u128(to_u128(self.addr) & mask_u128(self.prefix, bits), self.addr.is_ipv6()),
            prefix: self.prefix,
        }
    }

    /// True when `other` lies entirely inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.addr.is_ipv6() == self.addr.is_ipv6()
            && other.prefix >= self.prefix
            && to_u128(other.addr) & mask_u128(self.prefix, self.bits()) == to_u128(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn family_bits(addr: IpAddr) -> u8 {
    if addr.is_ipv6() {
        128
    } else {
        32
    }
}

/// The address as an integer, IPv4 in the low 32 bits.
fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// The netmask of `prefix` within a `bits`-wide family, as an integer.
fn mask_u128(prefix: u8, bits: u8) -> u128 {
    let all = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    if prefix == 0 {
        0
    } else {
        all & !((1u128 << (bits - prefix)) - 1)
    }
}

/// What claiming an existing allocation found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// It is in the pool and was free: now it is taken.
    Claimed,
    /// Another holder has it already.
    Taken,
    /// Not one of this pool's sub-prefixes (another family, another range or another size).
    Foreign,
}

/// Sub-prefixes of length `mask` carved from `cidr`, numbered from its start.
#[derive(Debug, Clone)]
pub struct CidrPool {
    cidr: Cidr,
    mask: u8,
    taken: BTreeSet<u128>,
}

impl CidrPool {
    pub fn new(cidr: Cidr, mask: u8) -> Result<CidrPool, String> {
        if mask < cidr.prefix || mask > cidr.bits() {
            return Err(format!(
                "mask size {mask} must be between the pool's prefix length {} and {}",
                cidr.prefix,
                cidr.bits()
            ));
        }
        if mask - cidr.prefix > 64 {
            return Err(format!("{cidr} split into /{mask} gives more than 2^64 node CIDRs; use a shorter mask size"));
        }
        Ok(CidrPool { cidr: cidr.network(), mask, taken: BTreeSet::new() })
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many sub-prefixes the pool holds.
    pub fn capacity(&self) -> u128 {
        1u128 << (self.mask - self.cidr.prefix)
    }

    pub fn in_use(&self) -> usize {
        self.taken.len()
    }

    fn subnet(&self, index: u128) -> Cidr {
        let step = 1u128 << (self.cidr.bits() - self.mask);
        Cidr { addr: from_u128(to_u128(self.cidr.addr) + index * step, self.cidr.is_ipv6()), prefix: self.mask }
    }

    fn index_of(&self, c: &Cidr) -> Option<u128> {
        if c.prefix != self.mask || !self.cidr.contains(c) {
            return None;
        }
        Some((to_u128(c.addr) - to_u128(self.cidr.addr)) >> (self.cidr.bits() - self.mask))
    }

    /// Marks an allocation found on an existing object as taken.
    pub fn claim(&mut self, c: &Cidr) -> Claim {
        match self.index_of(c) {
            None => Claim::Foreign,
            Some(i) if self.taken.insert(i) => Claim::Claimed,
            Some(_) => Claim::Taken,
        }
    }

    /// The lowest free sub-prefix, now taken; None when the pool is full.
    pub fn allocate(&mut self) -> Option<Cidr> {
        let mut want = 0u128;
        for &i in &self.taken {
            if i != want {
                break;
            }
            want += 1;
        }
        if want >= self.capacity() {
            return None;
        }
        self.taken.insert(want);
        Some(self.subnet(want))
    }

    /// Gives a sub-prefix back; false when it was not taken.
    pub fn release(&mut self, c: &Cidr) -> bool {
        self.index_of(c).is_some_and(|i| self.taken.remove(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).expect("valid cidr")
    }

    #[test]
    fn parse_rejects_bad_input_with_the_reason() {
        assert!(Cidr::parse("10.0.0.0").unwrap_err().contains("ADDRESS/LENGTH"));
        assert!(Cidr::parse("10.0.0.300/8").unwrap_err().contains("not an IP"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("longer than 32"));
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("did you mean 10.0.0.0/8"));
        assert_eq!(c("fd00::/104").to_string(), "fd00::/104");
    }

    #[test]
    fn pool_allocates_lowest_free_and_reuses_released() {
        let mut p = CidrPool::new(c("10.0.0.0/22"), 24).expect("pool");
        assert_eq!(p.capacity(), 4);
        assert_eq!(p.allocate(), Some(c("10.0.0.0/24")));
        assert_eq!(p.claim(&c("10.0.2.0/24")), Claim::Claimed);
        assert_eq!(p.claim(&c("10.0.2.0/24")), Claim::Taken);
        assert_eq!(p.allocate(), Some(c("10.0.1.0/24")));
        assert_eq!(p.allocate(), Some(c("10.0.3.0/24")));
        assert_eq!(p.allocate(), None);
        assert!(p.release(&c("10.0.1.0/24")));
        assert!(!p.release(&c("10.0.1.0/24")));
        assert_eq!(p.allocate(), Some(c("10.0.1.0/24")));
    }

    #[test]
    fn pool_ignores_foreign_prefixes() {
        let mut p = CidrPool::new(c("10.0.0.0/16"), 24).expect("pool");
        assert_eq!(p.claim(&c("10.1.0.0/24")), Claim::Foreign);
        assert_eq!(p.claim(&c("10.0.0.0/25")), Claim::Foreign);
        assert_eq!(p.claim(&c("fd00::/120")), Claim::Foreign);
        assert!(CidrPool::new(c("10.0.0.0/16"), 8).is_err());
        assert!(CidrPool::new(c("10.0.0.0/16"), 33).is_err());
    }

    #[test]
    fn ipv6_pool() {
        let mut p = CidrPool::new(c("fd00:10::/104"), 120).expect("pool");
        assert_eq!(p.allocate(), Some(c("fd00:10::/120")));
        assert_eq!(p.allocate(), Some(c("fd00:10::100/120")));
        assert_eq!(p.capacity(), 1 << 16);
    }
}
