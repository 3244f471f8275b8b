use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // mimalloc asks for transparent huge pages on its segments; with thousands of mostly idle
    // connections that makes every touched 4 KiB cost up to 2 MiB of resident memory. The
    // relay's working set is small and hot, so regular pages are the better trade.
    // SAFETY: prctl with these arguments only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    std::process::exit(ringway::main(std::env::args().skip(1).collect()));
}
