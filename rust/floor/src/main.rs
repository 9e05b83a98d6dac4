//! arrowsmith-floor: the native floor of the benchmarks. A V2 gRPC server that answers
//! ModelInfer and ModelStreamInfer with canned bytes, parsing nothing, on one thread: what
//! HTTP/2 itself costs per call, the most any server could answer on one core.

mod args;
mod grpc;
mod serve;

use std::io::Write;

use tokio::net::TcpListener;

fn main() {
    let options = match args::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("arrowsmith-floor: {message}\n");
            }
            eprint!("{}", args::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&options) {
        eprintln!("arrowsmith-floor: {message}");
        std::process::exit(1);
    }
}

/// Large allocations (W2's 180 KB requests arrive as one DATA frame, read into one buffer)
/// come from the heap and stay there. By default glibc maps some of them afresh for each
/// request (mmap, then a page fault per 4 KiB), and which it does changes from run to run:
/// the floor then answered W2 at a third of its rate in some runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_allocations_on_the_heap() {
    // SAFETY: mallopt only sets the allocator's parameters, before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_on_the_heap() {}

fn run(options: &args::Options) -> Result<(), String> {
    keep_large_allocations_on_the_heap();
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("reading {path}: {e}"));
    let unary = read(&options.response)?;
    let stream = options.stream_response.as_deref().map(read).transpose()?;
    let answers = serve::Answers::new(&unary, stream.as_deref());
    // One thread: the floor is pinned to one core, where threads would only take turns.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    runtime.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", options.port))
            .await
            .map_err(|e| format!("listening on port {}: {e}", options.port))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {port}")
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())?;
        serve::serve(listener, answers)
            .await
            .map_err(|e| format!("accepting: {e}"))
    })
}
