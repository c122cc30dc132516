//! `kube-sim --listen 127.0.0.1:PORT --kubeconfig PATH [--rbac]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "kube-sim",
    about = "Kubernetes API server simulator (dev only)"
)]
struct Args {
    /// Loopback address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for the admin user.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Enforce RBAC for non-admin tokens.
    #[arg(long)]
    rbac: bool,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 60)]
    bookmark_interval_secs: u64,
    /// Number of watch events kept before older resourceVersions are answered 410 Gone.
    #[arg(long, default_value_t = 1000)]
    watch_cache_size: usize,
    /// Where to write the serving CA certificate (PEM).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Fixed admin token (random by default).
    #[arg(long)]
    admin_token: Option<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let opts = kube_sim::Options {
        rbac: args.rbac,
        listen: args.listen,
        bookmark_interval: Duration::from_secs(args.bookmark_interval_secs),
        watch_cache_size: args.watch_cache_size,
        admin_token: args.admin_token,
    };
    // Handlers first: a script may signal as soon as it reads the listening line.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let running = kube_sim::Server::start(opts).await?;
    if let Some(path) = &args.kubeconfig {
        running.write_kubeconfig(path)?;
    }
    if let Some(path) = &args.ca_file {
        std::fs::write(path, running.ca_pem())?;
    }
    println!("kube-sim listening on {}", running.url());
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    drop(running);
    Ok(())
}
