//! Tensor descriptions (`TensorInfo`) and zero-copy tensor data (`TensorView`).

use foehn_kernels::GgmlType;

/// One entry of a GGUF file's tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the contiguous row length.
    pub shape: Vec<u64>,
    /// The ggml type id as stored in the file (may be unknown to foehn).
    pub type_id: u32,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes; `None` when the type id is unknown.
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// The tensor's type, `None` when the id is not a known ggml type.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    /// Number of elements (product of the shape; saturates instead of overflowing,
    /// which cannot happen for infos read from a file: the reader rejects those).
    pub fn n_elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// A tensor's data, borrowed from the file (no copy).
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions in ggml order: `shape[0]` is the contiguous row length.
    pub shape: &'a [u64],
    /// The raw bytes, exactly as many as the type and shape need.
    pub data: &'a [u8],
    /// Where `data` starts in the whole file ([`GgufFile::as_bytes`](super::GgufFile::as_bytes)).
    pub file_offset: usize,
}

impl TensorView<'_> {
    /// Number of elements (product of the shape).
    pub fn n_elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

impl std::fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("shape", &self.shape)
            .field("data", &format_args!("[{} bytes]", self.data.len()))
            .finish()
    }
}

/// Bytes a tensor of `ty` and `shape` occupies, or why it cannot exist: the row
/// length (`shape[0]`, 1 for a 0-dimensional tensor) must be a whole number of
/// blocks and nothing may overflow.
pub(crate) fn data_size(ty: GgmlType, shape: &[u64]) -> Result<u64, String> {
    let row_len = shape.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if row_len % block != 0 {
        return Err(format!(
            "row length {row_len} is not a multiple of the {ty} block size {block}"
        ));
    }
    let row_bytes = usize::try_from(row_len)
        .ok()
        .and_then(|n| ty.row_bytes(n))
        .ok_or_else(|| format!("row of {row_len} {ty} elements overflows the address space"))?;
    let rows = shape
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("element count of shape {shape:?} overflows u64"))?;
    (row_bytes as u64)
        .checked_mul(rows)
        .ok_or_else(|| format!("data size of shape {shape:?} in {ty} overflows u64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_size_counts_blocks() {
        assert_eq!(data_size(GgmlType::F32, &[3, 2]), Ok(24));
        assert_eq!(data_size(GgmlType::Q4_0, &[64, 3]), Ok(2 * 18 * 3));
        assert_eq!(data_size(GgmlType::Q4_K, &[256]), Ok(144));
        assert_eq!(data_size(GgmlType::F16, &[]), Ok(2));
        assert!(data_size(GgmlType::Q4_0, &[33, 1])
            .unwrap_err()
            .contains("block size"));
        assert!(data_size(GgmlType::F32, &[1 << 40, 1 << 40])
            .unwrap_err()
            .contains("overflow"));
    }
}
