//! The eBPF map types of `mesh_ebpf_common` from and to bytes, field by
//! field in native byte order: what aya does when `ambit bpf` reads a map
//! (a `Pod` copy), and what the eBPF programs write. Every byte pattern is
//! a valid value, so the decoders must take any of them.

use mesh_ebpf_common::{
    DirectKey, DirectVerdict, EnrolledNetns, InboundListenerKey, OriginalDst, SocketTuple,
    SpliceEvent, SpliceStats,
};

/// A map type read from, and written to, its kernel layout.
pub trait Layout: Sized {
    /// Its size in bytes, as the kernel has it.
    const SIZE: usize;
    /// Reads one value from the first [`Self::SIZE`] bytes; `None` when
    /// there are fewer.
    fn read(bytes: &[u8]) -> Option<Self>;
    /// Writes the value as the kernel has it.
    fn write(&self) -> Vec<u8>;
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gave N bytes")
    }

    fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }

    fn words(&mut self) -> [u32; 4] {
        [self.u32(), self.u32(), self.u32(), self.u32()]
    }
}

/// Appends fields in native byte order.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    fn words(self, words: [u32; 4]) -> Self {
        words.into_iter().fold(self, Self::u32)
    }
}

/// The front of `bytes` when it holds at least `T::SIZE` of them.
fn reader<T: Layout>(bytes: &[u8]) -> Option<Reader<'_>> {
    (bytes.len() >= T::SIZE).then_some(Reader(bytes))
}

impl Layout for EnrolledNetns {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            ipv4: r.u32(),
            flags: r.u32(),
            ipv6: r.words(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .u32(self.ipv4)
            .u32(self.flags)
            .words(self.ipv6)
            .0
    }
}

impl Layout for OriginalDst {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            addr: r.words(),
            port: r.u16(),
            family: r.u16(),
            pad: r.u32(),
            netns_cookie: r.u64(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .words(self.addr)
            .u16(self.port)
            .u16(self.family)
            .u32(self.pad)
            .u64(self.netns_cookie)
            .0
    }
}

impl Layout for SocketTuple {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            netns_cookie: r.u64(),
            src_addr: r.words(),
            dst_addr: r.words(),
            src_port: r.u16(),
            dst_port: r.u16(),
            family: r.u16(),
            pad: r.u16(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .u64(self.netns_cookie)
            .words(self.src_addr)
            .words(self.dst_addr)
            .u16(self.src_port)
            .u16(self.dst_port)
            .u16(self.family)
            .u16(self.pad)
            .0
    }
}

impl Layout for InboundListenerKey {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            addr: r.words(),
            family: r.u16(),
            pad: r.u16(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .words(self.addr)
            .u16(self.family)
            .u16(self.pad)
            .0
    }
}

impl Layout for DirectKey {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            src_addr: r.words(),
            dst_addr: r.words(),
            dst_port: r.u16(),
            family: r.u16(),
            pad: r.u32(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .words(self.src_addr)
            .words(self.dst_addr)
            .u16(self.dst_port)
            .u16(self.family)
            .u32(self.pad)
            .0
    }
}

impl Layout for DirectVerdict {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            allowed: r.u32(),
            pad: r.u32(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default().u32(self.allowed).u32(self.pad).0
    }
}

impl Layout for SpliceStats {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let mut r = reader::<Self>(bytes)?;
        Some(Self {
            sent: r.u64(),
            received: r.u64(),
            opened_ns: r.u64(),
            flags: r.u64(),
            cookie: r.u64(),
        })
    }

    fn write(&self) -> Vec<u8> {
        Writer::default()
            .u64(self.sent)
            .u64(self.received)
            .u64(self.opened_ns)
            .u64(self.flags)
            .u64(self.cookie)
            .0
    }
}

impl Layout for SpliceEvent {
    const SIZE: usize = size_of::<Self>();

    fn read(bytes: &[u8]) -> Option<Self> {
        let tuple = SocketTuple::read(bytes)?;
        let rest = bytes.get(SocketTuple::SIZE..)?;
        let stats = SpliceStats::read(rest)?;
        let mut r = Reader(rest.get(SpliceStats::SIZE..)?);
        if r.0.len() < 8 {
            return None;
        }
        Some(Self {
            tuple,
            stats,
            kind: r.u32(),
            pad: r.u32(),
        })
    }

    fn write(&self) -> Vec<u8> {
        let mut bytes = self.tuple.write();
        bytes.extend(self.stats.write());
        bytes.extend(Writer::default().u32(self.kind).u32(self.pad).0);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each type writes exactly its size, so the field lists above miss no
    /// field and no padding.
    #[test]
    fn every_layout_writes_its_size_and_reads_back() {
        fn check<T: Layout + Default + PartialEq + std::fmt::Debug>() {
            let bytes: Vec<u8> = (0..=u8::MAX).cycle().take(T::SIZE).collect();
            let value = T::read(&bytes).expect("enough bytes");
            assert_eq!(value.write(), bytes);
            assert!(T::read(&bytes[..T::SIZE - 1]).is_none());
            assert_eq!(T::default().write().len(), T::SIZE);
        }
        check::<EnrolledNetns>();
        check::<OriginalDst>();
        check::<SocketTuple>();
        check::<InboundListenerKey>();
        check::<DirectKey>();
        check::<DirectVerdict>();
        check::<SpliceStats>();
        check::<SpliceEvent>();
    }
}
