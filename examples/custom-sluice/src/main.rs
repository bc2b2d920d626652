//! `sluice` with the kit's connectors besides the built-ins: this line is the whole binary.
sluice::main!(custom_connector);
