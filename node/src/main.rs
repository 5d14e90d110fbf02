fn main() {
    println!("tribune {}", env!("CARGO_PKG_VERSION"));
}
