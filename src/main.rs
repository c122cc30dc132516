use std::process::ExitCode;

use kekeeper::cli::Cli;

#[cfg(all(feature = "jemalloc", unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (its `malloc_conf`, read at start): one arena, since the operator waits
/// on the network rather than on the allocator and every arena keeps its own free pages; and
/// freed pages returned to the system at once (`dirty_decay_ms:0`), so the objects a resync
/// decodes from its list pages and drops do not pile up as RSS: at 10,000 resources its peak
/// is 88 MiB against 98 MiB with a decay of 20 ms to 1 s, for about 0.7 s more CPU
/// (docs/design.md, "Decisions", jemalloc).
#[cfg(all(feature = "jemalloc", unix, not(target_env = "musl")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] =
    b"narenas:1,background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args();
    kekeeper::telemetry::init(cli.log_json);
    kekeeper::commands::dispatch(cli).await
}
