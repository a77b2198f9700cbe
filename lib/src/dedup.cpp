// DedupWindow (docs/messaging.md): the window, the position and its file.
#include "shmbus/dedup.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "shmbus/error.hpp"

namespace shmbus {

namespace {

// File: magic(8) position(8) count(4) app_len(4) count x {producer(4) pad(4) id(8)}
// app bytes, fnv1a-64 of all that (8). Little-endian as this host (same-host bus).
constexpr char kMagic[8] = {'S', 'H', 'M', 'B', 'D', 'D', 'P', '1'};
constexpr size_t kMaxApp = 64u << 20;
constexpr size_t kMaxEntries = 1u << 24;

uint64_t fnv1a(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

template <class T>
void put(std::vector<char>& o, T v) {
  const char* p = reinterpret_cast<const char*>(&v);
  o.insert(o.end(), p, p + sizeof v);
}

template <class T>
T get(const std::vector<char>& b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}

[[noreturn]] void sys_fail(const std::string& what, const std::string& path) {
  const int e = errno;
  throw Error(ErrorCode::system, "dedup state " + path + ": " + what + ": " + std::strerror(e), e);
}

}  // namespace

DedupWindow::DedupWindow(DedupOptions opts) : opts_(std::move(opts)) {
  if (opts_.capacity == 0) opts_.capacity = 1;
  if (opts_.capacity > kMaxEntries) opts_.capacity = kMaxEntries;
  if (!opts_.path.empty()) load();
}

void DedupWindow::load() {
  const std::string& p = opts_.path;
  // O_NONBLOCK: a FIFO planted at the path must not block the open (it is refused
  // below as not a regular file); regular-file reads ignore the flag.
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return;  // a first start
    sys_fail("open", p);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    sys_fail("fstat", p);
  }
  const size_t limit = 32 + kMaxEntries * 16 + kMaxApp;
  if (!S_ISREG(st.st_mode) || size_t(st.st_size) > limit) {
    ::close(fd);
    throw Error(ErrorCode::invalid_argument, "dedup state " + p + ": not a regular file of a plausible size");
  }
  if (st.st_uid != geteuid()) {  // another user's file in a shared directory decides nothing
    ::close(fd);
    throw Error(ErrorCode::permission_denied, "dedup state " + p + ": owned by uid " +
                                                  std::to_string(st.st_uid) + ", not by this process's uid " +
                                                  std::to_string(geteuid()));
  }
  // Copied once into memory; only the copy is validated and used.
  std::vector<char> b(size_t(st.st_size));
  size_t got = 0;
  while (got < b.size()) {
    const ssize_t n = ::read(fd, b.data() + got, b.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += size_t(n);
  }
  ::close(fd);
  auto bad = [&](const char* why) {
    return Error(ErrorCode::invalid_argument,
                 "dedup state " + p + " is not valid (" + why + "); move it away to start without it");
  };
  if (got != b.size() || b.size() < 32) throw bad("truncated");
  if (std::memcmp(b.data(), kMagic, 8) != 0) throw bad("bad magic");
  const uint64_t pos = get<uint64_t>(b, 8);
  const uint32_t count = get<uint32_t>(b, 16);
  const uint32_t app_len = get<uint32_t>(b, 20);
  if (count > kMaxEntries || app_len > kMaxApp) throw bad("sizes out of range");
  const size_t body = 24 + size_t(count) * 16 + app_len;
  if (b.size() != body + 8) throw bad("length does not match its header");
  if (get<uint64_t>(b, body) != fnv1a(b.data(), body)) throw bad("checksum mismatch");
  position_ = pos;
  for (uint32_t i = 0; i < count; ++i)
    insert({get<uint32_t>(b, 24 + size_t(i) * 16), get<uint64_t>(b, 32 + size_t(i) * 16)});
  app_.assign(b.data() + 24 + size_t(count) * 16, app_len);
}

bool DedupWindow::seen(uint32_t producer_id, uint64_t message_id, uint64_t sequence) {
  if (sequence != 0 && sequence <= position_) {
    ++stats_.by_position;
    return true;
  }
  if (message_id != 0 && set_.count({producer_id, message_id})) {
    ++stats_.by_id;
    return true;
  }
  return false;
}

void DedupWindow::insert(Key k) {
  if (!set_.insert(k).second) return;
  order_.push_back(k);
  while (order_.size() > opts_.capacity) {
    set_.erase(order_.front());
    order_.pop_front();
  }
}

void DedupWindow::record(uint32_t producer_id, uint64_t message_id, uint64_t sequence) {
  if (sequence > position_) position_ = sequence;
  if (message_id != 0) insert({producer_id, message_id});
}

void DedupWindow::commit(std::string_view app_state) {
  if (app_state.size() > kMaxApp)
    throw Error(ErrorCode::invalid_argument, "dedup: application state over 64 MiB");
  app_.assign(app_state);
  commit_current();
}

void DedupWindow::commit_current() {
  if (app_.size() > kMaxApp) throw Error(ErrorCode::invalid_argument, "dedup: application state over 64 MiB");
  if (opts_.path.empty()) return;
  // Built from the magic, then grown: an insert into the empty reserved vector made
  // g++ 12 (-O2 with TSan) report a false -Wstringop-overflow.
  std::vector<char> o(kMagic, kMagic + 8);
  o.reserve(32 + order_.size() * 16 + app_.size());
  put<uint64_t>(o, position_);
  put<uint32_t>(o, uint32_t(order_.size()));
  put<uint32_t>(o, uint32_t(app_.size()));
  for (const Key& k : order_) {
    put<uint32_t>(o, k.producer);
    put<uint32_t>(o, 0);
    put<uint64_t>(o, k.id);
  }
  o.insert(o.end(), app_.begin(), app_.end());
  put<uint64_t>(o, fnv1a(o.data(), o.size()));
  // A fresh temporary file (O_EXCL): one another user planted at the name is
  // removed first (unlink succeeds only where we may write the directory), never
  // written into and renamed into place as the state.
  const std::string tmp = opts_.path + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) sys_fail("open " + tmp, opts_.path);
  size_t done = 0;
  while (done < o.size()) {
    const ssize_t n = ::write(fd, o.data() + done, o.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      sys_fail("write " + tmp, opts_.path);
    }
    done += size_t(n);
  }
  if (::fdatasync(fd) != 0) {
    ::close(fd);
    sys_fail("fdatasync " + tmp, opts_.path);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), opts_.path.c_str()) != 0) sys_fail("rename", opts_.path);
  const size_t slash = opts_.path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : opts_.path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace shmbus
