fn main() {
    // Nothing imipd writes is for other users: the store, the queue, Maildir files (which get
    // their exact modes anyway). SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let argv: Vec<String> = std::env::args().collect();
    std::process::exit(imipd::cli::main_with(&argv));
}
