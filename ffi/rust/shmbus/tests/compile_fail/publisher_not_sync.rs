// A publisher is not `Sync` (one thread at a time).
fn is_sync<T: Sync>() {}

fn main() {
    is_sync::<shmbus::Publisher>();
}
