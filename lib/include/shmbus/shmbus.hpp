// Umbrella header for libshmbus.
#pragma once
#include "shmbus/bus.hpp"
#include "shmbus/error.hpp"
#include "shmbus/group.hpp"
#include "shmbus/message.hpp"
#include "shmbus/publisher.hpp"
#include "shmbus/subscriber.hpp"
