fn main() {
    let argv: Vec<String> = std::env::args().collect();
    std::process::exit(imipd::cli::main_with(&argv));
}
