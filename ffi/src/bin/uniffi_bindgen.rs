//! uniffi's binding generator, built from the same uniffi version as the library it reads:
//! `cargo run -p pock-ffi --features uniffi-bindgen --bin uniffi-bindgen -- generate --library
//! target/release/libpock_ffi.so --language kotlin|swift|python --out-dir DIR`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
