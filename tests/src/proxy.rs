//! A TCP forwarder that a test can cut and restore: the network between a
//! bastion and its database (or anything else) failing and coming back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Cancelled to drop every forwarded connection at once.
    live: Arc<std::sync::Mutex<CancellationToken>>,
    /// Cancelled to freeze every forwarded connection at once.
    frozen: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let live = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let frozen = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (open2, live2, stop2) = (open.clone(), live.clone(), stop.clone());
        let frozen2 = frozen.clone();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                if !open2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = live2.lock().unwrap().clone();
                let freeze = frozen2.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let frozen = tokio::select! {
                        _ = cut.cancelled() => false,
                        _ = freeze.cancelled() => true,
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    };
                    if frozen {
                        // A black hole: both sockets stay open, nothing passes.
                        cut.cancelled().await;
                        drop((client, server));
                    }
                });
            }
        });
        TcpProxy {
            addr,
            open,
            live,
            frozen,
            stop,
        }
    }

    /// Freezes every connection open now: nothing more passes either way and
    /// neither end is told (a link that died without a FIN or RST). New
    /// connections pass as before.
    pub fn freeze(&self) {
        let mut f = self.frozen.lock().unwrap();
        f.cancel();
        *f = CancellationToken::new();
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut live = self.live.lock().unwrap();
        live.cancel();
        *live = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.live.lock().unwrap().cancel();
    }
}
