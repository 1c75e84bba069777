/// mimalloc: thread-local free lists, where glibc malloc spent a tenth of the daemon's CPU
/// (arena locks, consolidation) under the doors' many small allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Nothing imipd writes is for other users: the store, the queue, Maildir files (which get
    // their exact modes anyway). SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let argv: Vec<String> = std::env::args().collect();
    std::process::exit(imipd::cli::main_with(&argv));
}
