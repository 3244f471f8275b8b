use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    std::process::exit(ringway::cli::main(std::env::args().skip(1).collect()));
}
