#include "shmbus/subscriber.hpp"

#include <sched.h>
#include <unistd.h>

namespace shmbus {

Subscriber::Subscriber(std::shared_ptr<PartitionMapping> m, const SubscriberOptions& opts)
    : m_(std::move(m)), opts_(opts) {
  if (!r_.join(m_->refs(), uint32_t(getpid()), opts_.tethered))
    throw Error(ErrorCode::no_slot, "topic '" + m_->topic() + "' partition " +
                                        std::to_string(m_->partition()) +
                                        ": every subscriber slot is taken");
  open_ = true;
}

Subscriber::Subscriber(Subscriber&& o) noexcept
    : m_(std::move(o.m_)), opts_(o.opts_), r_(o.r_), stats_(o.stats_), open_(o.open_) {
  o.open_ = false;
}

Subscriber& Subscriber::operator=(Subscriber&& o) noexcept {
  if (this != &o) {
    close();
    m_ = std::move(o.m_);
    opts_ = o.opts_;
    r_ = o.r_;
    stats_ = o.stats_;
    open_ = o.open_;
    o.open_ = false;
  }
  return *this;
}

Subscriber::~Subscriber() { close(); }

void Subscriber::close() {
  if (!open_) return;
  r_.leave();
  open_ = false;
  m_.reset();
}

uint32_t Subscriber::partition() const { return m_ ? m_->partition() : 0; }

Status Subscriber::poll(View& out) {
  if (!open_) return Status::closed;
  shm::FrameView f;
  switch (r_.poll(f)) {
    case shm::RingStatus::ok:
      out = View(f);
      ++stats_.received;
      return Status::ok;
    case shm::RingStatus::empty:
      return Status::empty;
    default:
      ++stats_.corrupt;
      return Status::corrupt;
  }
}

bool Subscriber::wait(int64_t timeout_ns) {
  if (!open_) return false;
  if (r_.has_data()) return true;
  const uint64_t start = shm::monotonic_ns();
  const uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : start + uint64_t(timeout_ns);
  uint32_t iter = 0;
  for (;;) {
    if (r_.has_data()) return true;
    uint64_t now = shm::monotonic_ns();
    if (now >= deadline) return false;
    bool sleep = opts_.wait == WaitStrategy::futex ||
                 (opts_.wait == WaitStrategy::hybrid && now - start >= uint64_t(opts_.spin_ns));
    if (!sleep) {
      ++iter;
      if (opts_.wait == WaitStrategy::spin_yield && iter > 64) sched_yield();
      else shm::cpu_relax();
      continue;
    }
    ++stats_.waits;
    // Bounded sleeps keep the heartbeat fresh for the daemon's liveness checks.
    int64_t chunk = 100'000'000;
    if (deadline != UINT64_MAX && int64_t(deadline - now) < chunk) chunk = int64_t(deadline - now);
    if (r_.wait(chunk)) return true;
    r_.heartbeat(shm::monotonic_ns());
  }
}

Status Subscriber::poll_wait(View& out, int64_t timeout_ns) {
  const uint64_t start = shm::monotonic_ns();
  for (;;) {
    Status s = poll(out);
    if (s != Status::empty) return s;
    int64_t left = timeout_ns;
    if (timeout_ns >= 0) {
      uint64_t spent = shm::monotonic_ns() - start;
      if (spent >= uint64_t(timeout_ns)) return Status::timed_out;
      left = timeout_ns - int64_t(spent);
    }
    // A wake-up can be for a padding frame only: poll again until the deadline.
    if (!wait(left)) return open_ ? Status::timed_out : Status::closed;
  }
}

void Subscriber::release(const View& v) {
  if (open_ && v) r_.release_to(v.next_position());
}

void Subscriber::release_all() {
  if (open_) r_.release_all();
}

}  // namespace shmbus
