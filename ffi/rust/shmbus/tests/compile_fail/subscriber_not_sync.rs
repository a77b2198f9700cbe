// Nor is a subscriber.
fn is_sync<T: Sync>() {}

fn main() {
    is_sync::<shmbus::Subscriber>();
}
