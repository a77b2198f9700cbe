@0x99d82f495b09c311;
# The shmbusd control protocol (docs/control-protocol.md is the prose version).
#
# Transport: a Unix-domain SOCK_SEQPACKET socket. One packet = one frame =
#   u32 magic "SBC1" (0x31434253 little-endian) | u32 payload length | payload
# where the payload is one unpacked Cap'n Proto message (segment table + segments).
# Every Request gets exactly one Response with the same `id`. File descriptors
# (segments) travel as SCM_RIGHTS on the response packet that names them.
#
# Versioning: `Request.version` is the protocol version the client speaks. The
# daemon answers requests of a major it does not speak with an error
# `unsupportedVersion`. New fields and union members are added at the end (Cap'n
# Proto evolution rules); a minor bump never changes a field's meaning.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shmbus::proto");

const protocolVersion :UInt16 = 2;  # 2: layout 3 (join/leave/cursorPage; read-only control segment)

enum Policy { block @0; fail @1; spill @2; }
enum Role { publisher @0; subscriber @1; admin @2; }
enum FlushPolicy { none @0; interval @1; batch @2; }   # durable topics (docs/spill-log.md)

enum ErrorCode {
  ok @0;
  invalidArgument @1;
  notFound @2;
  alreadyExists @3;
  incompatible @4;
  permissionDenied @5;
  noSlot @6;
  system @7;
  timedOut @8;
  protocol @9;            # the request could not be decoded
  unsupportedVersion @10;
  shuttingDown @11;
  tooLarge @12;
}

struct AccessList {
  # Who may publish / subscribe besides the topic's owner (its creator's uid),
  # root and the daemon's own uid. 0xFFFFFFFF in a uid list means "everyone".
  publishUids @0 :List(UInt32);
  publishGids @1 :List(UInt32);
  subscribeUids @2 :List(UInt32);
  subscribeGids @3 :List(UInt32);
}

struct TopicSpec {
  name @0 :Text;
  partitions @1 :UInt32 = 1;
  capacity @2 :UInt64 = 16777216;
  maxPayload @3 :UInt64;          # 0: capacity / 4
  policy @4 :Policy;
  multiProducer @5 :Bool;
  slots @6 :UInt32 = 64;
  schemaId @7 :UInt64;            # Cap'n Proto type id of the root struct, 0 = any
  access @8 :AccessList;
  # Durable topics (added in protocol 1; absent in old clients' requests = not durable).
  # `policy = spill` implies durable. The log is <state-dir>/<topic>/<partition>/.
  durable @9 :Bool;
  flush @10 :FlushPolicy = interval;
  flushIntervalMs @11 :UInt32 = 10;  # interval flush: fdatasync period
  retentionBytes @12 :UInt64;        # per partition, 0 = unlimited
  retentionAgeS @13 :UInt64;         # by a segment's last write, 0 = unlimited
  segmentBytes @14 :UInt64;          # log segment file size, 0 = 64 MiB
  # Ephemeral topics (added compatibly: absent = a normal topic). Owned by the
  # connection that created it: removed by the daemon when that connection closes
  # (close, exit, SIGKILL), never restored after a daemon restart. Not durable.
  ephemeral @15 :Bool;
  # Schema registry (added compatibly: absent = backward). How a new schema version
  # is checked against the stored ones (docs/messaging.md, "Schema registry").
  schemaMode @16 :SchemaMode;
}

enum SchemaMode { backward @0; forward @1; full @2; none @3; }

struct TopicInfo {
  spec @0 :TopicSpec;
  ownerUid @1 :UInt32;
  createdNs @2 :UInt64;           # CLOCK_REALTIME
  durable @3 :List(DurableCursor);
  logDir @4 :Text;                # durable topics: <state-dir>/<topic> (replay reads it)
  archived @5 :List(ArchiveStat); # durable topics: per partition (describeTopic)
  # The registry only (never in a reply): per partition the inode numbers of its data
  # and control memfds (data0, ctl0, data1, ctl1, ...), and the layout version they
  # were made with. A restart whose keeper died takes these back from live clients
  # (docs/protocol.md, "Segment lifetime in daemon mode").
  segmentInodes @6 :List(UInt64);
  segmentLayout @7 :UInt32;
}

struct ArchiveStat {
  partition @0 :UInt32;
  archivedSeq @1 :UInt64;         # highest sequence written to the log
  durableSeq @2 :UInt64;          # highest sequence acknowledged durable (flush policy)
  error @3 :Int32;                # errno of a failing write/sync, 0 = healthy
}

struct DurableCursor {
  # The last released position of a named (durable) subscriber, per partition.
  # saveCursor: the subscriber joined under `name` at `position` (registers the
  # name of the slot's hash with the daemon). TopicInfo.durable: the records.
  name @0 :Text;
  partition @1 :UInt32;
  position @2 :UInt64;
  topic @3 :Text;                 # saveCursor only
  nameHash @4 :UInt64;            # records: CursorSlot::name_hash of the name
  parked @5 :Bool;                # records: the slot is parked (holds its position)
  live @6 :Bool;                  # records: a live subscriber holds the name
  ownerUid @7 :UInt32;            # records: the uid that made the name (only it, or root, saves it)
  hasOwner @8 :Bool;              # records: ownerUid is set (older registries: the topic's owner)
}

struct SubscriberStat {
  slot @0 :UInt32;
  pid @1 :UInt32;
  position @2 :UInt64;
  lag @3 :UInt64;                 # producer position - subscriber position, bytes
  tethered @4 :Bool;
  durable @5 :Bool;
  lagMessages @6 :UInt64;         # messages published and not yet read (lapped: estimated from bytes)
  lapped @7 :Bool;                # the producer overwrote its read position (untethered): it will lose messages
}

struct PartitionStat {
  partition @0 :UInt32;
  producerPosition @1 :UInt64;
  nextSequence @2 :UInt64;
  ratePerSec @3 :Float64;         # messages per second over the daemon's last sample
  backPressureEvents @4 :UInt64;
  reclaimedCursors @5 :UInt64;
  filledClaims @6 :UInt64;
  producerPid @7 :UInt32;         # single-producer owner, 0 = none
  subscribers @8 :List(SubscriberStat);
  liveProducers @9 :UInt32;       # multi-producer table entries in use
  capacity @10 :UInt64;           # ring bytes
  durable @11 :Bool;              # archived to the spill log: the next three fields are set
  archivedSeq @12 :UInt64;        # highest sequence written to the log
  durableSeq @13 :UInt64;         # highest sequence durable per the flush policy
  archiverError @14 :Int32;       # errno of the failing log write or sync, 0 = healthy
}

struct TopicStat {
  name @0 :Text;
  partitions @1 :List(PartitionStat);
}

struct Request {
  version @0 :UInt16;
  id @1 :UInt64;
  union {
    hello @2 :Void;
    createTopic @3 :TopicSpec;
    describeTopic @4 :Text;
    listTopics @5 :Void;
    deleteTopic @6 :Text;
    open @7 :OpenRequest;
    stat @8 :Text;                # topic name, or "" for every topic
    health @9 :Void;
    saveCursor @10 :DurableCursor;
    listPage @11 :PageRequest;    # listTopics, a page at a time (any number of topics)
    statPage @12 :PageRequest;    # stat "" (every topic), a page at a time
    join @13 :JoinRequest;        # subscribers: a cursor slot and its page (layout 3)
    leave @14 :LeaveRequest;      # subscribers: give the slot back (or park it)
    cursorPage @15 :PageFetch;    # producers: a read-only fd of a slot's cursor page
    registerSchema @16 :SchemaRegistration;  # a publisher/subscriber presents its schema
    schemaHistory @17 :SchemaQuery;          # a topic's registered versions
    producer @18 :ProducerRequest;  # publishers: producer ownership (layout 4)
    groupJoin @19 :GroupRequest;    # consumer groups: become a member (a member is its connection)
    groupSync @20 :GroupRequest;    # consumer groups: the current generation and this member's partitions
    groupLeave @21 :GroupRequest;   # consumer groups: stop being a member (the group rebalances)
    setSchemaMode @22 :SchemaModeChange;  # the owner (or root) changes a topic's schema mode
  }
}

# Paging: topics in name order after `after` ("" = from the first), at most `limit`
# (0 = the daemon's page size, 256) and never more than fit in one frame. The reply's
# `next` is the `after` of the next page; `more` says whether there is one.
struct PageRequest {
  after @0 :Text;
  limit @1 :UInt32;
}

struct TopicPage {
  topics @0 :List(TopicInfo);     # listPage
  stats @1 :List(TopicStat);      # statPage
  next @2 :Text;
  more @3 :Bool;
}

struct OpenRequest {
  topic @0 :Text;
  partition @1 :UInt32;
  role @2 :Role;
  durableName @3 :Text;           # subscribers: resume position of this name
}

# Layout 3: the control segment is written only by the daemon. A subscriber gets
# its cursor slot from `join`: the daemon runs the join (P5), writes the slot, and
# hands back (one SCM_RIGHTS fd) a fresh read-write "cursor page" that only this
# grant uses. A durable name resumes its parked slot, or starts at its record; the
# name belongs to the uid that made it.
struct JoinRequest {
  topic @0 :Text;
  partition @1 :UInt32;
  tethered @2 :Bool = true;
  durableName @3 :Text;           # "" = anonymous
  start @4 :UInt64;               # a frame boundary to start at (hasStart), else the tail
  hasStart @5 :Bool;
  token @6 :UInt64;               # the client's random id for this join: resent (after a reconnect or a
                                  # daemon restart), the same process gets the same grant, never a second
}

struct JoinReply {
  # One descriptor comes with this packet: the grant's cursor page (read-write).
  slot @0 :UInt32;
  generation @1 :UInt32;
  position @2 :UInt64;            # the read position to start at
  checkBelow @3 :UInt64;          # frames below this get the lap check (P9/P11), 0 = none
  resumed @4 :Bool;               # a parked durable slot was taken over
  pageSize @5 :UInt64;
}

struct LeaveRequest {
  topic @0 :Text;
  partition @1 :UInt32;
  slot @2 :UInt32;
  generation @3 :UInt32;
  park @4 :Bool;                  # durable: keep the slot under its name (P11)
}

struct PageFetch {
  topic @0 :Text;
  partition @1 :UInt32;
  slot @2 :UInt32;
  generation @3 :UInt32;
}

# Layout 4: a publisher's ownership is granted by the daemon. The daemon picks a
# producer-table entry (multi-producer) or the partition's single-producer role,
# takes it over from a grantee it has proven dead (pidfd, process identity), writes an
# owner token of its own choosing into the data segment and records the grant
# (token, SO_PEERCRED pid, process identity) in the control segment. The publisher
# writes the token, never its pid, wherever ownership is checked.
struct ProducerRequest {
  topic @0 :Text;
  partition @1 :UInt32;
  token @2 :UInt64;               # the client's random id for this grant: resent (after a reconnect or a
                                  # daemon restart), the same process gets the same grant, never a second
  release @3 :Bool;               # give back the grant made for `token` (the publisher closed)
}

struct ProducerReply {
  slot @0 :UInt32;                # the producer-table entry (multi-producer), else 0
  token @1 :UInt32;               # the owner value the daemon wrote
  multi @2 :Bool;
}

# Consumer groups (docs/messaging.md, "Consumer groups"). The members of a group
# (named per topic) split the topic's partitions; a member is the connection that
# joined, removed when it leaves or its connection ends (close, exit, SIGKILL).
# Every change of membership is a new generation with a new assignment: partitions
# spread evenly over the members, sticky (a member keeps what it can), in the order
# of the member ids. Groups are not persisted; the committed position of a group on
# a partition is the durable subscriber name "group:<group>" (persisted as any).
struct GroupRequest {
  topic @0 :Text;
  group @1 :Text;                 # 1-200 bytes of printable ASCII, no space
  memberId @2 :UInt64;            # groupSync, groupLeave: the id groupJoin answered
  knownGeneration @3 :UInt32;     # groupSync: the generation the member acts on
}

struct GroupReply {
  memberId @0 :UInt64;
  generation @1 :UInt32;
  partitions @2 :List(UInt32);    # this member's partitions in `generation`, ascending
  members @3 :UInt32;             # live members of the group
  topicPartitions @4 :UInt32;     # the topic's partition count
}

struct PageReply {
  # One descriptor (read-only) comes with this packet, unless `embedded`.
  generation @0 :UInt32;
  pageSize @1 :UInt64;
}

# Schema registry. `nodes` is one serialized (unpacked) Cap'n Proto message whose
# root is a schema.capnp CodeGeneratorRequest: only its `nodes` are used (the root
# type and its dependencies; `capnp compile -o-` output is accepted as is). At most
# 128 KiB. A publisher (publish access) registers: a version that passes the topic's
# mode is stored (an identical one is not stored twice). A subscriber (subscribe
# access), or `checkOnly`, is checked and nothing is stored.
struct SchemaRegistration {
  topic @0 :Text;
  rootId @1 :UInt64;              # the root struct's type id
  nodes @2 :Data;
  role @3 :Role;                  # publisher: register; subscriber: check only
  checkOnly @4 :Bool;
}

# A topic's schema compatibility mode, changed in place (the versions stay). Checked
# against at the next registration; answered `done`.
struct SchemaModeChange {
  topic @0 :Text;
  mode @1 :SchemaMode;
}

struct SchemaReply {
  version @0 :UInt32;             # the version it is (or would be): 1, 2, ...; 0 = none stored
  stored @1 :Bool;                # a new version was stored by this request
}

struct SchemaQuery {
  topic @0 :Text;
  version @1 :UInt32;             # whose nodes come back: 0 = the latest
}

struct SchemaVersion {
  version @0 :UInt32;
  registeredNs @1 :UInt64;        # CLOCK_REALTIME
  uid @2 :UInt32;                 # who registered it
  rootId @3 :UInt64;
  nodes @4 :Data;                 # in a SchemaHistory reply: only the requested version's
  typeName @5 :Text;              # the root's name, e.g. "orders.Order"
}

struct SchemaHistory {
  # The reply to schemaHistory, and the file <state-dir>/schemas/<topic>.bin.
  topic @0 :Text;
  mode @1 :SchemaMode;
  versions @2 :List(SchemaVersion);
}

struct Response {
  id @0 :UInt64;
  union {
    error @1 :ErrorReply;
    hello @2 :HelloReply;
    topic @3 :TopicInfo;          # createTopic, describeTopic
    topics @4 :List(TopicInfo);   # listTopics
    done @5 :Void;                # deleteTopic, saveCursor
    open @6 :OpenReply;
    stats @7 :List(TopicStat);
    health @8 :HealthReply;
    page @9 :TopicPage;           # listPage, statPage
    join @10 :JoinReply;
    cursorPage @11 :PageReply;
    schema @12 :SchemaReply;          # registerSchema
    schemaHistory @13 :SchemaHistory; # schemaHistory
    producer @14 :ProducerReply;
    group @15 :GroupReply;            # groupJoin, groupSync (groupLeave answers done)
  }
}

struct ErrorReply {
  code @0 :ErrorCode;
  message @1 :Text;
}

struct HelloReply {
  version @0 :UInt16;
  daemonPid @1 :UInt32;
  uid @2 :UInt32;                 # the client's identity as the daemon sees it
  gid @3 :UInt32;
  pid @4 :UInt32;
}

struct OpenReply {
  # Three descriptors come with this packet, in order: the data segment (read-only
  # for subscribers), the control segment (read-only for every client) and the wake
  # segment (read-write for subscribers, read-only for publishers).
  dataSize @0 :UInt64;
  ctlSize @1 :UInt64;
  resumePosition @2 :UInt64;      # durable subscribers: where to resume, else 0
  hasResume @3 :Bool;
  wakeSize @4 :UInt64;
}

struct HealthReply {
  serving @0 :Bool;
  uptimeNs @1 :UInt64;
  topics @2 :UInt32;
  clients @3 :UInt32;
  openFds @4 :UInt32;
  rssBytes @5 :UInt64;
  reclaimedClients @6 :UInt64;
  daemonPid @7 :UInt32;
  stateDir @8 :Text;
}

struct State {
  # The daemon's persisted registry (--state-dir/registry.bin).
  topics @0 :List(TopicInfo);
}
