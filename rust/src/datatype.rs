//! The V2 tensor datatypes and their Arrow and numpy counterparts: the only table of them.

use arrow_schema::DataType as ArrowType;

/// A V2 (Open Inference Protocol) tensor datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// Parses the protocol's spelling (`"FP32"`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The protocol's spelling.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw contents; `None` for BYTES, whose elements vary.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// The numpy dtype name MLflow reasons with (BYTES arrive as Python objects).
    pub fn numpy_name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Uint8 => "uint8",
            DataType::Uint16 => "uint16",
            DataType::Uint32 => "uint32",
            DataType::Uint64 => "uint64",
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::Fp16 => "float16",
            DataType::Fp32 => "float32",
            DataType::Fp64 => "float64",
            DataType::Bytes => "object",
        }
    }

    /// The Arrow type a decoded tensor of this datatype is held in.
    pub fn arrow_type(self) -> ArrowType {
        match self {
            DataType::Bool => ArrowType::Boolean,
            DataType::Uint8 => ArrowType::UInt8,
            DataType::Uint16 => ArrowType::UInt16,
            DataType::Uint32 => ArrowType::UInt32,
            DataType::Uint64 => ArrowType::UInt64,
            DataType::Int8 => ArrowType::Int8,
            DataType::Int16 => ArrowType::Int16,
            DataType::Int32 => ArrowType::Int32,
            DataType::Int64 => ArrowType::Int64,
            DataType::Fp16 => ArrowType::Float16,
            DataType::Fp32 => ArrowType::Float32,
            DataType::Fp64 => ArrowType::Float64,
            DataType::Bytes => ArrowType::Binary,
        }
    }

    /// The V2 datatype that carries values of an Arrow type, if any.
    pub fn from_arrow(arrow: &ArrowType) -> Option<Self> {
        Some(match arrow {
            ArrowType::Boolean => DataType::Bool,
            ArrowType::UInt8 => DataType::Uint8,
            ArrowType::UInt16 => DataType::Uint16,
            ArrowType::UInt32 => DataType::Uint32,
            ArrowType::UInt64 => DataType::Uint64,
            ArrowType::Int8 => DataType::Int8,
            ArrowType::Int16 => DataType::Int16,
            ArrowType::Int32 => DataType::Int32,
            ArrowType::Int64 => DataType::Int64,
            ArrowType::Float16 => DataType::Fp16,
            ArrowType::Float32 => DataType::Fp32,
            ArrowType::Float64 => DataType::Fp64,
            ArrowType::Binary
            | ArrowType::LargeBinary
            | ArrowType::BinaryView
            | ArrowType::Utf8
            | ArrowType::LargeUtf8
            | ArrowType::Utf8View => DataType::Bytes,
            _ => return None,
        })
    }

    /// Every datatype's name, for error messages.
    pub fn all_names() -> String {
        Self::ALL.map(DataType::name).join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in DataType::ALL {
            assert_eq!(DataType::parse(t.name()), Some(t));
            assert_eq!(DataType::from_arrow(&t.arrow_type()), Some(t));
        }
        assert_eq!(DataType::parse("fp32"), None);
    }
}
