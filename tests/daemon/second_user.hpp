// A second, unprivileged local user for the trust-boundary tests: created with
// useradd when missing (CI runs as root), acted as through setpriv. Tests skip
// (with a WARN) when not root or when setpriv is missing.
#pragma once

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "daemon_util.hpp"

namespace shmbus::test {

struct SecondUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string skip;  // non-empty: why the test cannot run
  // argv that runs `args` as this user, no supplementary groups.
  std::vector<std::string> as(std::vector<std::string> args) const {
    std::vector<std::string> v = {"/usr/bin/setpriv", "--reuid=" + std::to_string(uid),
                                  "--regid=" + std::to_string(gid), "--clear-groups", "--"};
    v.insert(v.end(), args.begin(), args.end());
    return v;
  }
};

inline SecondUser second_user(const char* name = "shmbustest2") {
  SecondUser u;
  if (geteuid() != 0) {
    u.skip = "not root (needs useradd and setpriv)";
    return u;
  }
  if (!getpwnam(name)) {
    std::string cmd = std::string("useradd --system --no-create-home ") + name + " >/dev/null 2>&1";
    int rc = system(cmd.c_str());
    (void)rc;
  }
  passwd* pw = getpwnam(name);
  if (!pw || access("/usr/bin/setpriv", X_OK) != 0) {
    u.skip = "no second user or no setpriv";
    return u;
  }
  u.uid = pw->pw_uid;
  u.gid = pw->pw_gid;
  return u;
}

}  // namespace shmbus::test
