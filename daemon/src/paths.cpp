// Directories the daemon trusts, and the files inside them.
//
// The daemon runs as root for many users, so every path it touches is suspect: a
// directory another user created (or replaced by a symlink) could redirect a root
// write anywhere. Rule: a directory is used only when it is a real directory (not a
// symlink), owned by the daemon's euid and writable by nobody else; everything
// inside it is then opened relative to its fd (openat, O_NOFOLLOW), so no path
// resolution runs through anything another user controls.
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>

#include "core.hpp"

namespace shmbus::daemon {

namespace {
std::string octal(mode_t m) {
  char b[16];
  snprintf(b, sizeof b, "0%03o", unsigned(m & 07777));
  return b;
}
}  // namespace

void check_trusted_dir(int fd, const std::string& path, const char* what) {
  struct stat st {};
  if (fstat(fd, &st) < 0) {
    const int e = errno;
    throw Error(ErrorCode::system, path + ": fstat: " + strerror(e), e);
  }
  if (!S_ISDIR(st.st_mode))
    throw Error(ErrorCode::invalid_argument, std::string(what) + " " + path + " is not a directory");
  if (st.st_uid != geteuid())
    throw Error(ErrorCode::permission_denied,
                std::string(what) + " " + path + " is owned by uid " + std::to_string(st.st_uid) +
                    ", not by this daemon's uid " + std::to_string(geteuid()) +
                    ": refusing it (someone else may have created it; remove it or choose another path)");
  if (st.st_mode & 022)
    throw Error(ErrorCode::permission_denied, std::string(what) + " " + path +
                                                  " is writable by group or others (mode " +
                                                  octal(st.st_mode) + "): refusing it (chmod go-w, or 0700)");
}

int open_trusted_dir(const std::string& path, mode_t create_mode, const char* what) {
  if (path.empty()) throw Error(ErrorCode::invalid_argument, std::string(what) + ": empty path");
  // Parents: created when missing (like mkdir -p); they are not trusted, only the
  // last component is, and nothing below it is reached by path afterwards.
  for (size_t i = path.find('/', 1); i != std::string::npos; i = path.find('/', i + 1))
    mkdir(path.substr(0, i).c_str(), 0755);
  bool created = mkdir(path.c_str(), create_mode) == 0;
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ELOOP || e == ENOTDIR)
      throw Error(ErrorCode::permission_denied,
                  std::string(what) + " " + path + " is a symlink or not a directory: refusing it", e);
    throw Error(ErrorCode::system, std::string(what) + " " + path + ": " + strerror(e), e);
  }
  try {
    check_trusted_dir(fd, path, what);
  } catch (...) {
    close(fd);
    throw;
  }
  if (created) fchmod(fd, create_mode);  // whatever the umask did
  return fd;
}

int open_private_dir_at(int dirfd, const std::string& name, const std::string& shown, const char* what) {
  mkdirat(dirfd, name.c_str(), 0700);
  int fd = openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    throw Error(e == ELOOP || e == ENOTDIR ? ErrorCode::permission_denied : ErrorCode::system,
                std::string(what) + " " + shown + ": " +
                    (e == ELOOP || e == ENOTDIR ? "a symlink or not a directory: refusing it" : strerror(e)),
                e);
  }
  try {
    check_trusted_dir(fd, shown, what);
  } catch (...) {
    close(fd);
    throw;
  }
  return fd;
}

int open_state_file(int dirfd, const char* name, int flags, const std::string& shown) {
  int fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  struct stat st {};
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
    close(fd);
    errno = EPERM;
    (void)shown;
    return -1;
  }
  return fd;
}

}  // namespace shmbus::daemon
