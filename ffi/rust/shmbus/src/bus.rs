//! The bus connection and topic management.
use std::ffi::CString;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use shmbus_sys as sys;

use crate::error::{check, Error, Result};
use crate::group::{GroupOptions, GroupSubscriber};
use crate::publisher::{Publisher, PublisherOptions};
use crate::subscriber::{Subscriber, SubscriberOptions};

/// Owns a `shmbus_bus_t*`; closed when the last [`Bus`], [`Publisher`] or
/// [`Subscriber`] holding it is dropped (they keep it alive through an `Arc`).
pub(crate) struct BusHandle(NonNull<sys::shmbus_bus_t>);

// SAFETY: the C ABI allows a bus handle to be used from any thread, concurrently
// ("a bus handle may be used from any thread"), so sharing and sending it is sound.
unsafe impl Send for BusHandle {}
// SAFETY: as above: every bus call is thread-safe on the C side.
unsafe impl Sync for BusHandle {}

impl BusHandle {
    pub(crate) fn as_ptr(&self) -> *mut sys::shmbus_bus_t {
        self.0.as_ptr()
    }
}

impl Drop for BusHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful _open, is closed exactly once
        // (here), and no publisher/subscriber uses it any more: each holds an Arc.
        unsafe { sys::shmbus_bus_close(self.0.as_ptr()) }
    }
}

/// A process's connection to the bus. Cheap to clone (shared); `Send + Sync`.
///
/// Publishers and subscribers opened from it keep the connection alive, so the
/// `Bus` value itself may be dropped before them.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusHandle>,
}

/// What a producer does when the ring is full.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Wait (with the publisher's timeout).
    Block,
    /// Fail at once with [`Error::BackPressured`].
    Fail,
    /// Durable topics: the archiver bounds the producer.
    Spill,
    /// A policy this crate does not know (a newer library).
    Other(u32),
}

impl Policy {
    fn to_raw(self) -> u32 {
        match self {
            Policy::Block => sys::SHMBUS_POLICY_BLOCK,
            Policy::Fail => sys::SHMBUS_POLICY_FAIL,
            Policy::Spill => sys::SHMBUS_POLICY_SPILL,
            Policy::Other(v) => v,
        }
    }
    fn from_raw(v: u32) -> Self {
        match v {
            sys::SHMBUS_POLICY_BLOCK => Policy::Block,
            sys::SHMBUS_POLICY_FAIL => Policy::Fail,
            sys::SHMBUS_POLICY_SPILL => Policy::Spill,
            v => Policy::Other(v),
        }
    }
}

/// How a blocking call waits.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the CPU until the event (lowest latency, one core busy).
    BusySpin,
    /// Spin, yielding the CPU to other threads between checks.
    SpinYield,
    /// Sleep on the ring's futex at once (no spinning; a wake-up costs a syscall).
    Futex,
    /// Spin for `spin` (a subscriber option; the library default for publishers), then sleep on the futex (the default).
    Hybrid,
}

impl WaitStrategy {
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            WaitStrategy::BusySpin => sys::SHMBUS_WAIT_BUSY_SPIN,
            WaitStrategy::SpinYield => sys::SHMBUS_WAIT_SPIN_YIELD,
            WaitStrategy::Futex => sys::SHMBUS_WAIT_FUTEX,
            WaitStrategy::Hybrid => sys::SHMBUS_WAIT_HYBRID,
        }
    }
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            sys::SHMBUS_WAIT_BUSY_SPIN => WaitStrategy::BusySpin,
            sys::SHMBUS_WAIT_SPIN_YIELD => WaitStrategy::SpinYield,
            sys::SHMBUS_WAIT_FUTEX => WaitStrategy::Futex,
            _ => WaitStrategy::Hybrid,
        }
    }
}

/// Settings of a topic. `TopicConfig::default()` takes the library's defaults
/// (`shmbus_topic_config_init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Partitions (rings) of the topic; publishers and subscribers pick one by index.
    pub partitions: u32,
    /// Ring bytes per partition: a power of two >= 4096.
    pub capacity: u64,
    /// Largest payload; 0: capacity / 4.
    pub max_payload: u64,
    /// What a producer does at a full ring: wait (`Block`), fail (`Fail`) or spill to the log (`Spill`, durable topics).
    pub policy: Policy,
    /// Several producers per partition (slower claim).
    pub multi_producer: bool,
    /// Subscriber slots per partition.
    pub slots: u32,
    /// Permission bits of the segments.
    pub mode: u32,
    /// Expected Cap'n Proto root type id, 0 = any.
    pub schema_id: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        let mut raw = sys::shmbus_topic_config_t::default();
        // SAFETY: raw is a valid, writable shmbus_topic_config_t.
        unsafe { sys::shmbus_topic_config_init(&mut raw) };
        Self::from_raw(&raw)
    }
}

impl TopicConfig {
    fn to_raw(&self) -> sys::shmbus_topic_config_t {
        let mut raw = sys::shmbus_topic_config_t::default();
        // SAFETY: raw is a valid, writable shmbus_topic_config_t; init sets `size`.
        unsafe { sys::shmbus_topic_config_init(&mut raw) };
        raw.partitions = self.partitions;
        raw.capacity = self.capacity;
        raw.max_payload = self.max_payload;
        raw.policy = self.policy.to_raw();
        raw.multi_producer = u32::from(self.multi_producer);
        raw.slots = self.slots;
        raw.mode = self.mode;
        raw.schema_id = self.schema_id;
        raw
    }
    fn from_raw(raw: &sys::shmbus_topic_config_t) -> Self {
        TopicConfig {
            partitions: raw.partitions,
            capacity: raw.capacity,
            max_payload: raw.max_payload,
            policy: Policy::from_raw(raw.policy),
            multi_producer: raw.multi_producer != 0,
            slots: raw.slots,
            mode: raw.mode,
            schema_id: raw.schema_id,
        }
    }
}

/// When the daemon's archiver makes a durable topic's log durable on disk.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Page cache only: survives a daemon crash, not a power loss.
    None,
    /// `fdatasync` every [`DurableConfig::flush_interval`] (the default, 10 ms).
    Interval,
    /// `fdatasync` after each batch the archiver writes.
    Batch,
}

/// Settings of a durable topic (archived by `shmbusd` to its spill log), for
/// [`Bus::create_durable_topic`]. `DurableConfig::default()` takes the library's
/// defaults (flush every 10 ms, unlimited retention, 64 MiB segments); the
/// builder methods change one setting each:
///
/// ```no_run
/// # use shmbus::{Bus, DurableConfig, Flush, TopicConfig};
/// # let bus = Bus::connect(None)?;
/// let dur = DurableConfig::default().flush(Flush::Batch).retention_bytes(1 << 30);
/// bus.create_durable_topic("orders", &TopicConfig::default(), &dur)?;
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableConfig {
    /// When the log is synced.
    pub flush: Flush,
    /// [`Flush::Interval`]: the sync period (whole milliseconds).
    pub flush_interval: Duration,
    /// Log bytes kept per partition, 0 = unlimited.
    pub retention_bytes: u64,
    /// Age of a log segment's last write after which it is removed (whole seconds), zero = unlimited.
    pub retention_age: Duration,
    /// Log segment file size, 0 = 64 MiB.
    pub segment_bytes: u64,
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self::from_raw(&raw_durable())
    }
}

fn raw_durable() -> sys::shmbus_durable_config_t {
    let mut raw = sys::shmbus_durable_config_t::default();
    // SAFETY: raw is a valid, writable struct of exactly the size passed.
    unsafe {
        sys::shmbus_durable_config_init(
            &mut raw,
            std::mem::size_of::<sys::shmbus_durable_config_t>() as u32,
        )
    };
    raw
}

impl DurableConfig {
    /// Sets [`DurableConfig::flush`].
    pub fn flush(mut self, f: Flush) -> Self {
        self.flush = f;
        self
    }
    /// Sets [`DurableConfig::flush_interval`] (and [`Flush::Interval`]).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush = Flush::Interval;
        self.flush_interval = d;
        self
    }
    /// Sets [`DurableConfig::retention_bytes`].
    pub fn retention_bytes(mut self, n: u64) -> Self {
        self.retention_bytes = n;
        self
    }
    /// Sets [`DurableConfig::retention_age`].
    pub fn retention_age(mut self, d: Duration) -> Self {
        self.retention_age = d;
        self
    }
    /// Sets [`DurableConfig::segment_bytes`].
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }
    fn to_raw(&self) -> Result<sys::shmbus_durable_config_t> {
        let mut raw = raw_durable();
        raw.durable = 1;
        raw.flush = match self.flush {
            Flush::None => sys::SHMBUS_FLUSH_NONE,
            Flush::Interval => sys::SHMBUS_FLUSH_INTERVAL,
            Flush::Batch => sys::SHMBUS_FLUSH_BATCH,
        };
        raw.flush_interval_ms = u32::try_from(self.flush_interval.as_millis()).map_err(|_| {
            Error::InvalidArgument("flush_interval is longer than 2^32 ms".to_string().into())
        })?;
        raw.retention_bytes = self.retention_bytes;
        raw.retention_age_s = self.retention_age.as_secs();
        raw.segment_bytes = self.segment_bytes;
        Ok(raw)
    }
    fn from_raw(raw: &sys::shmbus_durable_config_t) -> Self {
        DurableConfig {
            flush: match raw.flush {
                sys::SHMBUS_FLUSH_NONE => Flush::None,
                sys::SHMBUS_FLUSH_BATCH => Flush::Batch,
                _ => Flush::Interval,
            },
            flush_interval: Duration::from_millis(u64::from(raw.flush_interval_ms)),
            retention_bytes: raw.retention_bytes,
            retention_age: Duration::from_secs(raw.retention_age_s),
            segment_bytes: raw.segment_bytes,
        }
    }
}

pub(crate) fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("NUL byte in {s:?}").into()))
}

fn path_cstring(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("NUL byte in {}", p.display()).into()))
}

/// Converts an optional timeout (None: forever) to the C ABI's nanoseconds (<0: forever).
pub(crate) fn timeout_ns(t: Option<Duration>) -> i64 {
    match t {
        None => -1,
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
    }
}

impl Bus {
    fn from_open(open: impl FnOnce(*mut *mut sys::shmbus_bus_t) -> std::ffi::c_int) -> Result<Bus> {
        let mut out: *mut sys::shmbus_bus_t = ptr::null_mut();
        check(open(&mut out))?;
        let h = NonNull::new(out)
            .ok_or_else(|| Error::Internal("bus open returned OK and a NULL handle".into()))?;
        Ok(Bus {
            inner: Arc::new(BusHandle(h)),
        })
    }

    /// A bus without a daemon: this process creates and maps segments under
    /// `/dev/shm`, their names prefixed with `shm_prefix` (tests use their own).
    pub fn open_direct(shm_prefix: &str) -> Result<Bus> {
        let p = cstring(shm_prefix)?;
        // SAFETY: p is a valid NUL-terminated string for the call; out is writable.
        Bus::from_open(|out| unsafe { sys::shmbus_bus_open_direct(p.as_ptr(), out) })
    }

    /// Connects to `shmbusd` at `socket_path` (None: the per-user default).
    pub fn connect(socket_path: Option<&Path>) -> Result<Bus> {
        let p = socket_path.map(path_cstring).transpose()?;
        let pp = p.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: pp is NULL or a valid NUL-terminated string for the call.
        Bus::from_open(|out| unsafe { sys::shmbus_bus_connect(pp, out) })
    }

    /// Starts a daemon inside this process with its state in `state_dir` (None: a
    /// private temporary directory) and connects to it.
    pub fn open_embedded(state_dir: Option<&Path>) -> Result<Bus> {
        let p = state_dir.map(path_cstring).transpose()?;
        let pp = p.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: pp is NULL or a valid NUL-terminated string for the call.
        Bus::from_open(|out| unsafe { sys::shmbus_bus_open_embedded(pp, out) })
    }

    /// Creates `topic`; idempotent for the same settings, [`Error::AlreadyExists`]
    /// for other settings.
    pub fn create_topic(&self, topic: &str, cfg: &TopicConfig) -> Result<()> {
        let t = cstring(topic)?;
        let raw = cfg.to_raw();
        // SAFETY: the bus handle is live (Arc), t and raw are valid for the call.
        check(unsafe { sys::shmbus_topic_create(self.inner.as_ptr(), t.as_ptr(), &raw) })
    }

    /// Creates a durable `topic` (archived by the daemon: subscribers can start in
    /// its past with [`crate::Start`], publishers wait with
    /// [`Publisher::wait_durable`]). Needs a daemon ([`Bus::connect`], or
    /// [`Bus::open_embedded`] with a state directory): [`Error::Unsupported`]
    /// otherwise. Idempotent for the same settings, durable ones included.
    pub fn create_durable_topic(
        &self,
        topic: &str,
        cfg: &TopicConfig,
        dur: &DurableConfig,
    ) -> Result<()> {
        let t = cstring(topic)?;
        let raw = cfg.to_raw();
        let d = dur.to_raw()?;
        // SAFETY: the bus handle is live (Arc); t, raw and d are valid for the call.
        check(unsafe {
            sys::shmbus_topic_create_durable(self.inner.as_ptr(), t.as_ptr(), &raw, &d)
        })
    }

    /// The durable settings of an existing topic, `None` when it is not durable
    /// (on a bus without a daemon no topic is durable).
    pub fn describe_durable(&self, topic: &str) -> Result<Option<DurableConfig>> {
        let t = cstring(topic)?;
        let mut raw = raw_durable();
        // SAFETY: the bus handle is live, t is valid, raw writable (size set by init).
        check(unsafe {
            sys::shmbus_topic_describe_durable(self.inner.as_ptr(), t.as_ptr(), &mut raw)
        })?;
        Ok((raw.durable != 0).then(|| DurableConfig::from_raw(&raw)))
    }

    /// Removes `topic` and its segments.
    pub fn remove_topic(&self, topic: &str) -> Result<()> {
        let t = cstring(topic)?;
        // SAFETY: the bus handle is live, t is valid for the call.
        check(unsafe { sys::shmbus_topic_remove(self.inner.as_ptr(), t.as_ptr()) })
    }

    /// The settings of an existing topic.
    pub fn describe_topic(&self, topic: &str) -> Result<TopicConfig> {
        let t = cstring(topic)?;
        let mut raw = sys::shmbus_topic_config_t::default();
        // SAFETY: raw is a valid, writable config with its size set by init.
        unsafe { sys::shmbus_topic_config_init(&mut raw) };
        // SAFETY: the bus handle is live, t is valid, raw writable for the call.
        check(unsafe { sys::shmbus_topic_describe(self.inner.as_ptr(), t.as_ptr(), &mut raw) })?;
        Ok(TopicConfig::from_raw(&raw))
    }

    pub(crate) fn handle(&self) -> &BusHandle {
        &self.inner
    }

    /// Opens a publisher on `topic`.
    pub fn publisher(&self, topic: &str, opts: &PublisherOptions) -> Result<Publisher> {
        Publisher::open(self.inner.clone(), topic, opts)
    }

    /// Opens a subscriber on `topic`.
    pub fn subscriber(&self, topic: &str, opts: &SubscriberOptions) -> Result<Subscriber> {
        Subscriber::open(self.inner.clone(), topic, opts)
    }

    /// Joins `group` on `topic` as a new member (see [`GroupSubscriber`]); needs a
    /// daemon bus (`Err(Error::Unsupported)` on a direct one).
    pub fn group_subscriber(
        &self,
        topic: &str,
        group: &str,
        opts: &GroupOptions,
    ) -> Result<GroupSubscriber> {
        GroupSubscriber::open(self.inner.clone(), topic, group, opts)
    }

    /// Creates a reply topic and a [`Requester`](crate::Requester) on it.
    pub fn requester(&self, opts: &crate::RequesterOptions) -> Result<crate::Requester> {
        crate::Requester::open(self.inner.clone(), opts)
    }

    /// Opens a [`Responder`](crate::Responder) on the service topic `topic` (the
    /// subscriber options' start must be [`Start::Latest`](crate::Start::Latest)).
    pub fn responder(&self, topic: &str, opts: &SubscriberOptions) -> Result<crate::Responder> {
        crate::Responder::open(self.inner.clone(), topic, opts)
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("handle", &self.inner.as_ptr())
            .finish()
    }
}
