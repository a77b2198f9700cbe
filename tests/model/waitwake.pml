/*
 * Model of the v2 data wait/wake handshake (P6, /work/briefs/v2.md "Wait/wake"):
 * a waiter bitmap, subscribers that sleep on data_futex and may die at any step
 * (asleep or not), a reclaimer that clears a dead subscriber's bit, and one producer
 * on a store-buffer (TSO) machine.
 *
 * Memory model. The producer's commit is a plain release store followed by a compiler
 * barrier and a plain load of the bitmap ("light side"): on x86 the store may sit in
 * the store buffer (sb) after the load has read the bitmap. Other CPUs see only the
 * flushed value (vis). A locked RMW (the futex-word increment) drains the buffer; so
 * does the subscriber's membarrier (an IPI that runs a full barrier on every CPU
 * running a thread of the process). Everything else is sequentially consistent.
 *
 * Data at a subscriber's read position = vis > rd (the commit word is no longer 0).
 *
 * Switches:
 *   NOFENCE   the subscriber skips the membarrier (must FAIL: a lost wake-up)
 *   V1COUNT   v1's data_waiters counter instead of the bitmap (must FAIL: a sleeper
 *             that dies leaves the counter > 0 forever, the "no leaked waiter" check)
 */
#ifndef NSUB
#define NSUB 2
#endif
#ifndef NMSG
#define NMSG 2
#endif
#ifndef MAXDIE
#define MAXDIE 1
#endif

byte vis = 0;         /* commits visible to other CPUs */
byte sb = 0;          /* commits still in the producer's store buffer */
byte bitmap = 0;      /* v2: bit s set while subscriber s may sleep */
byte waiters = 0;     /* v1: data_waiters counter */
byte fut = 0;         /* data_futex */
bool asleep[NSUB];    /* blocked in futex_wait */
bool sdead[NSUB];
bool sdone[NSUB];
bool reaped[NSUB];
bool pdone = 0;
byte ndead = 0;

#define FLUSH  vis = vis + sb; sb = 0

/* Subscriber s (RingReader::wait in a loop): consume NMSG messages. */
proctype subscriber(byte s) {
  byte rd = 0, v = 0;
  {
    do
    :: atomic { rd == NMSG -> sdone[s] = 1 }; break
    :: atomic { rd < NMSG && vis > rd -> rd++ }            /* poll: a frame */
    :: atomic { rd < NMSG && vis == rd ->                  /* poll: empty -> wait */
#ifdef V1COUNT
                waiters++                                  /* 1. seq_cst fetch_add */
#else
                bitmap = bitmap | (1 << s)                 /* 1. seq_cst fetch_or of our bit */
#endif
       };
#ifndef NOFENCE
       atomic { FLUSH };                                   /* 2. membarrier */
#endif
       v = fut;                                            /* 3. futex value */
       if
       :: vis > rd -> skip                                 /* 4. re-check: ready */
       :: else ->
          atomic { if                                      /* 5. futex_wait(v) */
                   :: fut == v -> asleep[s] = 1
                   :: else -> skip
                   fi };
          !asleep[s]                                       /*    woken */
       fi;
       atomic {                                            /* 6. clear our bit */
#ifdef V1COUNT
         waiters--;
#else
         bitmap = bitmap & ~(1 << s);
#endif
         v = 0
       }
    od
  } unless { atomic { sdead[s] -> asleep[s] = 0; rd = 0; v = 0 } }
}

/* The producer: NMSG commits. */
proctype producer() {
  byte i = 0, b;
  do
  :: i < NMSG ->
     sb++;                                  /* commit word: release store (buffered) */
                                            /* compiler barrier: no CPU ordering */
#ifdef V1COUNT
     b = waiters;                           /* load the waiters (may pass the store) */
#else
     b = bitmap;                            /* load the bitmap (may pass the store) */
#endif
     if
     :: b != 0 ->
        atomic { FLUSH; fut++ };            /* locked fetch_add: drains the buffer */
        atomic {                            /* futex_wake_all */
          asleep[0] = 0;
          if :: NSUB > 1 -> asleep[NSUB - 1] = 0 :: else -> skip fi
        }
     :: else -> skip
     fi;
     i++; b = 0
  :: i == NMSG -> break
  od;
  pdone = 1
}

/* The CPU drains the producer's store buffer at any time. */
proctype cpu() {
end:
  do
  :: atomic { sb > 0 -> FLUSH }
  od
}

/* A subscriber may die at any step (at most MAXDIE). */
proctype killer() {
end:
  do
  :: atomic { ndead < MAXDIE && !sdone[0] && !sdead[0] -> sdead[0] = 1; ndead++ }
  :: atomic { ndead < MAXDIE && NSUB > 1 && !sdone[NSUB - 1] && !sdead[NSUB - 1] ->
              sdead[NSUB - 1] = 1; ndead++ }
  od
}

/* The reclaimer (step c of a dead subscriber's reclaim): clears its waiter bit. v1
 * has no per-subscriber record in the counter: there is nothing it could undo. */
proctype reclaimer(byte s) {
  if
  :: sdone[s] -> skip
  :: sdead[s] ->
#ifndef V1COUNT
     bitmap = bitmap & ~(1 << s);
#endif
     reaped[s] = 1
  fi
}

/* When everything has ended: no waiter is left counted (otherwise every later
 * commit pays a futex wake, forever). A subscriber left asleep with data is a lost
 * wake-up: Spin reports it as an invalid end state. */
proctype monitor() {
  atomic {
    (pdone && sb == 0 && (sdone[0] || reaped[0]) && (NSUB < 2 || sdone[NSUB - 1] || reaped[NSUB - 1])) ->
#ifdef V1COUNT
    assert(waiters == 0)
#else
    assert(bitmap == 0)
#endif
  }
}

init {
  atomic {
    run producer();
    run cpu();
    run killer();
    run monitor();
    run subscriber(0); run reclaimer(0);
    if :: NSUB > 1 -> run subscriber(NSUB - 1); run reclaimer(NSUB - 1) :: else -> skip fi
  }
}
