//! Transforms shipped with Sluice (record → zero or more records), applied in a source or sink
//! task through its `transforms:` list.

pub mod fields;
pub mod filter;
