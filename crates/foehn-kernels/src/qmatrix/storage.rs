//! Where a matrix's bytes live: owned, borrowed from a shared owner (a
//! mapped file) through [`ByteSource`], packed into aligned tiles, or
//! deferred (see `packing.rs`).

use std::ops::Range;
use std::sync::Arc;

use super::packing::Deferred;
use crate::cpu::TileKernel;

/// An owner of immutable bytes that weight matrices borrow from (a mapped
/// GGUF or safetensors file, a shared buffer).
///
/// Implementations must return the same bytes on every call: matrices check
/// their byte range once, when they are built.
pub trait ByteSource: Send + Sync {
    /// The owner's bytes.
    fn bytes(&self) -> &[u8];

    /// Tells the owner that `range` of its bytes will not be read again (a
    /// packed copy replaced them), so a memory-mapped owner can drop those
    /// pages from the process's resident memory. The bytes must stay
    /// readable (a mapped file simply pages them in again). Default: nothing.
    fn release(&self, range: Range<usize>) {
        let _ = range;
    }
}

impl ByteSource for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Where a matrix's bytes live.
#[derive(Clone)]
pub(super) enum Storage {
    /// Bytes owned by the matrix (repacked, converted or built in memory).
    Owned(Vec<u8>),
    /// A byte range of a shared owner.
    Shared {
        source: Arc<dyn ByteSource>,
        range: Range<usize>,
    },
    /// Repacked into 16-row tiles.
    Packed {
        kernel: TileKernel,
        tiles: AlignedBytes,
    },
    /// Byte ranges of shared owners, computed in place by a direct kernel
    /// until a product with more than `DIRECT_ACT_ROWS` activation rows
    /// (or `QMatrix::pack_in_background`) packs them (see
    /// `QMatrix::packed`).
    Deferred(Arc<Deferred>),
}

/// `rows` rows in `range` of `source`'s bytes.
pub(super) struct SharedPart {
    pub(super) source: Arc<dyn ByteSource>,
    pub(super) range: Range<usize>,
    pub(super) rows: usize,
}

impl SharedPart {
    pub(super) fn bytes(&self) -> &[u8] {
        // The range was checked against the source when the matrix was
        // built, and a source returns the same bytes on every call.
        self.source.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

/// Bytes in 64-byte aligned storage (cache lines, 512-bit loads), zeroed
/// when made. Large buffers are anonymous memory maps that the kernel may
/// back with transparent huge pages: a 7B model's packed weights then fault
/// in by the 2 MB instead of by the 4 KB page, which matters for the time to
/// first token.
pub(super) enum AlignedBytes {
    Lines { lines: Vec<CacheLine>, len: usize },
    Map(memmap2::MmapMut),
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct CacheLine([u8; 64]);

/// Buffers from this size on are memory maps.
const MAP_FROM: usize = 1 << 20;

impl AlignedBytes {
    /// `len` zero bytes.
    pub(super) fn zeroed(len: usize) -> Self {
        if len >= MAP_FROM {
            if let Ok(map) = memmap2::MmapOptions::new().len(len).map_anon() {
                // Only a hint: without it the pages are 4 KB.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Self::Map(map);
            }
        }
        Self::Lines {
            lines: vec![CacheLine([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Lines { len, .. } => *len,
            Self::Map(map) => map.len(),
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: as `as_slice`, through a unique borrow.
            Self::Lines { lines, len } => unsafe {
                std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), *len)
            },
            Self::Map(map) => &mut map[..],
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            // SAFETY: `lines` holds `lines.len() * 64 >= len` initialized
            // bytes (CacheLine is a plain byte array).
            Self::Lines { lines, len } => unsafe {
                std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), *len)
            },
            Self::Map(map) => &map[..],
        }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len());
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}
