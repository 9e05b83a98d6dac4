//! The fuzz targets' shared code: `harness` runs one input through a parser and checks what
//! must hold. The regression tests (`rust/tests/fuzz_regressions.rs`) include the same file.

pub mod harness;
