// Errors in libshmbus.
//
// Convention (one rule, everywhere):
//  * set-up and control calls (opening a bus, creating a topic, opening a publisher
//    or subscriber) throw shmbus::Error, which carries an ErrorCode and a message
//    with context;
//  * hot-path calls (claim, commit, offer, poll, release, wait) never throw and never
//    allocate: they return a shmbus::Status.
// Cap'n Proto's own reader throws kj::Exception on a malformed message; View::read()
// turns that into Status::malformed.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace shmbus {

enum class Status : uint8_t {
  ok = 0,
  empty,           // poll: nothing to read
  back_pressured,  // the ring is full (policy fail, or block timed out)
  timed_out,       // a wait ran out
  too_large,       // the message can never fit in this topic's frames
  corrupt,         // the ring holds bytes that are not a valid frame
  malformed,       // a frame's payload is not a valid Cap'n Proto message
  closed,          // the publisher/subscriber/bus was closed
  lapped,          // untethered subscriber: the producer overwrote what it had not read
                   // yet; it continues at the producer's tail (messages were lost)
  interrupted,     // a blocked wait or claim was ended by interrupt() from another thread
};

const char* to_string(Status s) noexcept;

enum class ErrorCode : int {
  invalid_argument = 1,
  not_found,
  already_exists,
  incompatible,  // a segment of another layout version or other topic settings
  permission_denied,
  no_slot,  // every subscriber slot is taken
  system,   // an OS call failed (Error::sys_errno() says which errno)
  timed_out,
  protocol,  // the daemon said something unexpected
  not_connected,
};

// An error of a set-up or control call. When a failed OS call is behind it (of any
// ErrorCode: connect's ECONNREFUSED is not_connected, open's EACCES may be
// permission_denied), the throw site passes that call's errno, read right after the
// call and before anything else could change it; sys_errno() is 0 otherwise.
// The C ABI returns -sys_errno() for ErrorCode::system and reports it for every code
// through shmbus_last_errno().
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& what, int sys_errno = 0)
      : std::runtime_error(what), code_(code), errno_(sys_errno) {}
  ErrorCode code() const noexcept { return code_; }
  int sys_errno() const noexcept { return errno_; }

 private:
  ErrorCode code_;
  int errno_;
};

}  // namespace shmbus
