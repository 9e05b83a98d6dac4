//! A model's MLflow signature as the native side holds it, built once per model.

use crate::datatype::DataType;

/// An MLflow column type (`mlflow.types.DataType`), or one without a V2 mapping yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Integer,
    Long,
    Float,
    Double,
    String,
    Binary,
    Datetime,
    /// Array, Object, Map, AnyType: named, so refusals can say what the column is.
    Other(String),
}

impl ColumnType {
    /// Parses MLflow's name for the type (`"double"`, `"long"`, ...).
    pub fn parse(name: &str) -> Self {
        match name {
            "boolean" => ColumnType::Boolean,
            "integer" => ColumnType::Integer,
            "long" => ColumnType::Long,
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "string" => ColumnType::String,
            "binary" => ColumnType::Binary,
            "datetime" => ColumnType::Datetime,
            other => ColumnType::Other(other.to_owned()),
        }
    }

    /// The numpy dtype MLflow converts the column to, as its messages name it.
    pub fn numpy_name(&self) -> &str {
        match self {
            ColumnType::Boolean => "bool",
            ColumnType::Integer => "int32",
            ColumnType::Long => "int64",
            ColumnType::Float => "float32",
            ColumnType::Double => "float64",
            ColumnType::String => "str",
            ColumnType::Binary => "bytes",
            ColumnType::Datetime => "datetime64[ns]",
            ColumnType::Other(name) => name,
        }
    }
}

/// One column of a column-based signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: Option<String>,
    pub ty: ColumnType,
    pub required: bool,
}

/// The numpy dtype of a tensor spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// A fixed-width dtype, carried by exactly one V2 datatype.
    Fixed(DataType),
    /// `str` (numpy kind U): BYTES holding UTF-8 text.
    Str,
    /// `bytes` (numpy kind S): BYTES as they come.
    Bytes,
    /// `object`: BYTES; a spec of shape `[-1]` takes anything (MLflow's ragged arrays).
    Object,
}

impl TensorType {
    /// Parses a numpy dtype name (`"uint8"`, `"float32"`, `"str"`, `"bytes"`, `"object"`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "str" => Some(TensorType::Str),
            "bytes" => Some(TensorType::Bytes),
            "object" => Some(TensorType::Object),
            other => DataType::ALL
                .into_iter()
                .find(|t| *t != DataType::Bytes && t.numpy_name() == other)
                .map(TensorType::Fixed),
        }
    }

    pub fn numpy_name(self) -> &'static str {
        match self {
            TensorType::Fixed(t) => t.numpy_name(),
            TensorType::Str => "str",
            TensorType::Bytes => "bytes",
            TensorType::Object => "object",
        }
    }

    /// Whether a V2 tensor of `datatype` carries this dtype exactly (no conversion).
    pub fn accepts(self, datatype: DataType) -> bool {
        match self {
            TensorType::Fixed(t) => t == datatype,
            TensorType::Str | TensorType::Bytes | TensorType::Object => datatype == DataType::Bytes,
        }
    }
}

/// One tensor of a tensor-based signature; -1 in `shape` is a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: Option<String>,
    pub ty: TensorType,
    pub shape: Vec<i64>,
}

/// A model's input signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    Columns(Vec<ColumnSpec>),
    Tensors(Vec<TensorSpec>),
}
