//! Weights from model files: each linear layer becomes a [`QMatrix`] that
//! borrows its bytes from the mapped file, each norm a small `Vec<f32>`.
//!
//! Shapes are given in the model's terms (`rows × cols` of `out = W · x`) and
//! checked against the file; a type the kernels cannot compute with is refused
//! here, when the model is built, not at the first forward pass.

use std::sync::Arc;

use foehn_kernels::{dequantize_row, ByteSource, GgmlType, QMatrix};
use foehn_loader::{GgufFile, LoadError, SafetensorsModel, StDtype};

use crate::{ModelError, Result};

/// A model file that hands out weight matrices and vectors by tensor name.
pub(crate) trait TensorSource {
    /// Whether the file has a tensor of that name.
    fn contains(&self, name: &str) -> bool;
    /// The `rows × cols` matrix `name` (borrowed from the file).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix>;
    /// The vector `name` of `len` elements, converted to f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
    /// Matrix `expert` (`rows × cols`) of the 3-D tensor `name`, which holds
    /// one such matrix for each of `experts` experts (borrowed from the file).
    fn expert_matrix(
        &self,
        name: &str,
        expert: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix>;
}

/// The byte range of expert `expert`'s matrix in a 3-D tensor of `len`
/// bytes holding `experts` matrices of `rows × cols` elements of type `ty`.
fn expert_range(
    name: &str,
    ty: GgmlType,
    len: usize,
    (expert, experts): (usize, usize),
    (rows, cols): (usize, usize),
) -> Result<std::ops::Range<usize>> {
    let per = ty
        .row_bytes(cols)
        .and_then(|b| b.checked_mul(rows))
        .filter(|&per| per.checked_mul(experts) == Some(len))
        .ok_or_else(|| {
            ModelError::Config(format!(
                "tensor '{name}' holds {len} bytes, not {experts} {ty} matrices of {rows} × {cols}"
            ))
        })?;
    if expert >= experts {
        return Err(ModelError::Config(format!(
            "expert {expert} of tensor '{name}', which holds {experts}"
        )));
    }
    Ok(expert * per..(expert + 1) * per)
}

fn unsupported(tensor: &str, ty: GgmlType) -> ModelError {
    ModelError::UnsupportedTensorType {
        tensor: tensor.to_string(),
        ty: ty.name().to_string(),
    }
}

/// A loader error, with an uncomputable tensor type reported as the model's own
/// [`ModelError::UnsupportedTensorType`].
fn load_err(e: LoadError) -> ModelError {
    match e {
        LoadError::UnsupportedTensorType { name, ty } => {
            ModelError::UnsupportedTensorType { tensor: name, ty }
        }
        e => ModelError::Load(e),
    }
}

fn shape_err(tensor: &str, expected: Vec<usize>, found: Vec<usize>) -> ModelError {
    ModelError::Shape {
        tensor: tensor.to_string(),
        expected,
        found,
    }
}

/// A shared GGUF file, as the byte owner of its tensors' [`QMatrix`]es:
/// each matrix holds its tensor's byte range in the file, found once when it
/// is built, so reading its bytes is a slice (no lookup by name).
struct GgufFileBytes(Arc<GgufFile>);

impl ByteSource for GgufFileBytes {
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn release(&self, range: std::ops::Range<usize>) {
        if let Some(bytes) = self.bytes().get(range) {
            self.0.release_pages(bytes);
        }
    }
}

/// A GGUF file as a source of weights (llama.cpp tensor names, ggml shapes).
pub(crate) struct GgufSource {
    file: Arc<GgufFile>,
    bytes: Arc<GgufFileBytes>,
}

impl GgufSource {
    /// The weights of `file`.
    pub(crate) fn new(file: Arc<GgufFile>) -> Self {
        let bytes = Arc::new(GgufFileBytes(Arc::clone(&file)));
        Self { file, bytes }
    }

    /// The tensor's shape in ggml order (`[row length, rows, …]`).
    fn shape(name: &str, shape: &[u64]) -> Result<Vec<usize>> {
        shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| ModelError::Config(format!("tensor '{name}' is too large")))
    }
}

impl TensorSource for GgufSource {
    fn contains(&self, name: &str) -> bool {
        self.file.tensors().iter().any(|t| t.name == name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let view = self.file.tensor(name).map_err(load_err)?;
        if !view.ty.can_dequantize() {
            return Err(unsupported(name, view.ty));
        }
        let found = Self::shape(name, view.shape)?;
        if found != [cols, rows] {
            return Err(shape_err(name, vec![cols, rows], found));
        }
        let source: Arc<dyn ByteSource> = self.bytes.clone();
        Ok(QMatrix::from_shared(
            view.ty,
            rows,
            cols,
            source,
            view.file_offset..view.file_offset + view.data.len(),
        )?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let view = self.file.tensor(name).map_err(load_err)?;
        if !view.ty.can_dequantize() {
            return Err(unsupported(name, view.ty));
        }
        let found = Self::shape(name, view.shape)?;
        if found != [len] {
            return Err(shape_err(name, vec![len], found));
        }
        let mut out = vec![0.0; len];
        dequantize_row(view.ty, view.data, &mut out)?;
        Ok(out)
    }

    fn expert_matrix(
        &self,
        name: &str,
        expert: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix> {
        let view = self.file.tensor(name).map_err(load_err)?;
        if !view.ty.can_dequantize() {
            return Err(unsupported(name, view.ty));
        }
        let found = Self::shape(name, view.shape)?;
        if found != [cols, rows, experts] {
            return Err(shape_err(name, vec![cols, rows, experts], found));
        }
        let range = expert_range(
            name,
            view.ty,
            view.data.len(),
            (expert, experts),
            (rows, cols),
        )?;
        let source: Arc<dyn ByteSource> = self.bytes.clone();
        let at = view.file_offset;
        Ok(QMatrix::from_shared(
            view.ty,
            rows,
            cols,
            source,
            at + range.start..at + range.end,
        )?)
    }
}

/// One tensor of a shared safetensors model, as the byte owner of a [`QMatrix`].
struct StTensorBytes {
    model: Arc<SafetensorsModel>,
    name: String,
}

impl ByteSource for StTensorBytes {
    fn bytes(&self) -> &[u8] {
        // Found and type-checked when the matrix was built; the model is immutable.
        self.model.tensor(&self.name).map_or(&[], |t| t.data)
    }
}

/// A Hugging Face safetensors model as a source of weights (row-major shapes).
/// Where a checkpoint keeps its text decoder: at the top (`model.…`,
/// `lm_head.weight`), or inside a multimodal `Mistral3ForConditionalGeneration`
/// (`language_model.model.…` / `language_model.lm_head.weight` of the first
/// releases, `model.language_model.…` / `lm_head.weight` of transformers ≥ 4.52).
/// The vision tower and projector are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextPrefix {
    None,
    LanguageModel,
    ModelLanguageModel,
}

pub(crate) struct StSource {
    model: Arc<SafetensorsModel>,
    prefix: TextPrefix,
}

impl StSource {
    /// The text decoder of `model`, wherever the checkpoint keeps it.
    pub(crate) fn new(model: Arc<SafetensorsModel>) -> Self {
        let prefix = if model.contains("model.embed_tokens.weight") {
            TextPrefix::None
        } else if model.contains("language_model.model.embed_tokens.weight") {
            TextPrefix::LanguageModel
        } else if model.contains("model.language_model.embed_tokens.weight") {
            TextPrefix::ModelLanguageModel
        } else {
            TextPrefix::None
        };
        Self { model, prefix }
    }

    /// The file's name of the decoder tensor HF calls `name`.
    fn resolve(&self, name: &str) -> String {
        match self.prefix {
            TextPrefix::None => name.to_string(),
            TextPrefix::LanguageModel => format!("language_model.{name}"),
            TextPrefix::ModelLanguageModel => match name.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => name.to_string(),
            },
        }
    }

    /// An FP8 weight dequantized with its `weight_scale_inv` (as bf16).
    fn fp8_matrix(&self, name: &str, data: &[u8], rows: usize, cols: usize) -> Result<QMatrix> {
        let scale_name = format!("{name}_scale_inv");
        let scale = self.model.tensor(&scale_name).map_err(|e| match e {
            LoadError::MissingTensor(_) => ModelError::Config(format!(
                "FP8 weight '{name}' has no '{scale_name}' (per-tensor or block scales)"
            )),
            e => load_err(e),
        })?;
        if scale.dtype == StDtype::F8E4M3 {
            return Err(ModelError::Config(format!(
                "'{scale_name}' is itself FP8; scales are F32, F16 or BF16"
            )));
        }
        let layout = crate::fp8::ScaleLayout::of(&scale_name, scale.shape, rows, cols)?;
        let mut scales = vec![0.0; scale.shape.iter().product::<usize>().max(1)];
        dequantize_row(st_type(scale.dtype)?, scale.data, &mut scales)?;
        let bytes = crate::fp8::dequantize_bf16(name, data, &scales, layout, rows, cols)?;
        Ok(QMatrix::from_owned(GgmlType::BF16, rows, cols, bytes)?)
    }
}

/// The kernels' type of a safetensors dtype that is computed as stored.
fn st_type(dtype: StDtype) -> Result<GgmlType> {
    match dtype {
        StDtype::F32 => Ok(GgmlType::F32),
        StDtype::F16 => Ok(GgmlType::F16),
        StDtype::BF16 => Ok(GgmlType::BF16),
        StDtype::F8E4M3 => Err(ModelError::Config(
            "an FP8 tensor outside a linear layer (FP8 checkpoints keep norms and embeddings in \
             16 bits)"
                .into(),
        )),
    }
}

impl TensorSource for StSource {
    fn contains(&self, name: &str) -> bool {
        self.model.contains(&self.resolve(name))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let name = self.resolve(name);
        let t = self.model.tensor(&name).map_err(load_err)?;
        if t.shape != [rows, cols] {
            return Err(shape_err(&name, vec![rows, cols], t.shape.to_vec()));
        }
        if t.dtype == StDtype::F8E4M3 {
            return self.fp8_matrix(&name, t.data, rows, cols);
        }
        let len = t.data.len();
        let source = Arc::new(StTensorBytes {
            model: Arc::clone(&self.model),
            name: name.clone(),
        });
        Ok(QMatrix::from_shared(
            st_type(t.dtype)?,
            rows,
            cols,
            source,
            0..len,
        )?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let name = self.resolve(name);
        let t = self.model.tensor(&name).map_err(load_err)?;
        if t.shape != [len] {
            return Err(shape_err(&name, vec![len], t.shape.to_vec()));
        }
        let mut out = vec![0.0; len];
        dequantize_row(st_type(t.dtype)?, t.data, &mut out)?;
        Ok(out)
    }

    fn expert_matrix(
        &self,
        name: &str,
        expert: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix> {
        let name = self.resolve(name);
        let t = self.model.tensor(&name).map_err(load_err)?;
        if t.shape != [experts, rows, cols] {
            return Err(shape_err(
                &name,
                vec![experts, rows, cols],
                t.shape.to_vec(),
            ));
        }
        let ty = st_type(t.dtype)?;
        let range = expert_range(&name, ty, t.data.len(), (expert, experts), (rows, cols))?;
        let source = Arc::new(StTensorBytes {
            model: Arc::clone(&self.model),
            name,
        });
        Ok(QMatrix::from_shared(ty, rows, cols, source, range)?)
    }
}
