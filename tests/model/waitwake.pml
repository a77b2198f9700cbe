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
 *   HOSTILE   layout 3: the bitmap lives in the wake segment, which every subscriber
 *             may write; a hostile one clears bits at any time. With SLICE the
 *             sleeper sleeps in bounded slices and re-arms its bit (sleep_for_data,
 *             kSharedWakeSliceNs): must hold. Without SLICE: must FAIL (lost wake).
 *
 * SPACE selects the second model in this file: the layout-3 P7 space handshake
 * (see below the #else).
 */
#ifndef SPACE
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
#ifdef SLICE
          if
          :: !asleep[s]                                    /*    woken */
          :: atomic { asleep[s] -> asleep[s] = 0 }         /*    the slice ends */
          fi
#else
          !asleep[s]                                       /*    woken */
#endif
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

#ifdef HOSTILE
/* A hostile subscriber clears the other subscribers' bits whenever it likes (up to
 * NHOSTILE times, so that a stuck system is a deadlock Spin reports). */
#ifndef NHOSTILE
#define NHOSTILE 2
#endif
proctype hostile() {
  byte k = 0;
end:
  do
  :: k < NHOSTILE -> bitmap = 0; k++
  od
}
#endif

init {
  atomic {
    run producer();
    run cpu();
    run killer();
    run monitor();
#ifdef HOSTILE
    run hostile();
#endif
    run subscriber(0); run reclaimer(0);
    if :: NSUB > 1 -> run subscriber(NSUB - 1); run reclaimer(NSUB - 1) :: else -> skip fi
  }
}

#else /* SPACE */
/*
 * Layout 3, P7: a producer blocked on space and the subscribers that bound it.
 *
 * Each tethered subscriber s releases into its own cursor page (pos[s]) and owns
 * that page's wake word (w[s]). Its release is the light side: a plain store (in
 * its store buffer sb[s]), a compiler barrier, a plain load of space_waiter_bits;
 * if the producer's bit is set it bumps w[s] (a locked RMW: drains its buffer) and
 * wakes w[s]. The producer (RingWriter::prepare_space_wait): sets its bit, runs the
 * membarrier (drains every buffer), scans for the binding (slowest) cursor, reads
 * THAT page's wake word, re-scans, and sleeps on it only if the binding did not
 * change. The daemon frees a dead subscriber's slot: FREE, then bumps its page word.
 *
 * Checks: the producer never sleeps forever while space is free (invalid end state).
 * Switches (each must FAIL with a lost wake-up):
 *   SP_NOFENCE     the producer skips the membarrier
 *   SP_LATEREAD    the producer reads the wake word after the re-scan
 *   SP_NOFREEWAKE  the daemon frees a dead subscriber's slot without bumping its page
 */
#ifndef NREL
#define NREL 2
#endif
#define NS 2

byte pos[NS];          /* visible released positions (a freed slot: NREL) */
byte sb[NS];           /* releases still in subscriber s's store buffer */
byte w[NS];            /* the pages' wake words */
bool freed[NS];
bool dead[NS];
bool sbit = 0;          /* the producer's space-waiter bit */
byte sleepon = 255;    /* the page word the producer sleeps on, 255 = awake */
bool pdone = 0;
byte ndead = 0;

#define DRAIN(s) pos[s] = pos[s] + sb[s]; sb[s] = 0
#define CUR(s) (freed[s] -> NREL : pos[s])

proctype sub(byte s) {
  byte r = 0;
  bool b;
  {
    do
    :: r < NREL ->
       sb[s]++; r++;                          /* release: store (buffered) */
       b = sbit;                               /* compiler barrier, load the bits */
       if
       :: b -> atomic { DRAIN(s); w[s]++ };   /* locked bump of our page word */
               atomic { if :: sleepon == s -> sleepon = 255 :: else -> skip fi }
       :: else -> skip
       fi
    :: r == NREL -> break
    od
  } unless { atomic { dead[s] -> skip } }
}

proctype cpu() {
end:
  do
  :: atomic { sb[0] > 0 -> DRAIN(0) }
  :: atomic { sb[NS - 1] > 0 -> DRAIN(NS - 1) }
  od
}

proctype killer() {
end:
  do
  :: atomic { ndead < 1 && !dead[0] && pos[0] + sb[0] < NREL -> dead[0] = 1; ndead++ }
  od
}

/* The daemon: frees the slot of a dead subscriber (its own grant record). */
proctype daemon() {
end:
  dead[0];
  atomic { sb[0] = 0; freed[0] = 1 };        /* state FREE (seq_cst) */
#ifndef SP_NOFREEWAKE
  atomic { w[0]++; if :: sleepon == 0 -> sleepon = 255 :: else -> skip fi }
#endif
}

proctype producer() {
  byte b1, b2, v, m;
  do
  :: atomic { CUR(0) >= NREL && CUR(NS - 1) >= NREL -> break }   /* space */
  :: else ->
     sbit = 1;
#ifndef SP_NOFENCE
     atomic { DRAIN(0); DRAIN(NS - 1) };      /* membarrier */
#endif
     atomic { b1 = (CUR(0) <= CUR(NS - 1) -> 0 : NS - 1); m = CUR(b1) };
     if
     :: m >= NREL && CUR(NS - 1 - b1) >= NREL -> sbit = 0
     :: else ->
#ifndef SP_LATEREAD
        v = w[b1];                             /* the binding page's word, before */
#endif
        atomic { b2 = (CUR(0) <= CUR(NS - 1) -> 0 : NS - 1); m = CUR(b2) };  /* re-scan */
#ifdef SP_LATEREAD
        v = w[b1];
#endif
        if
        :: m >= NREL -> skip
        :: b2 != b1 -> skip
        :: else ->
           atomic { if :: w[b1] == v -> sleepon = b1 :: else -> skip fi };
           sleepon == 255                      /* woken */
        fi;
        sbit = 0
     fi
  od;
  pdone = 1
}

init {
  atomic {
    run cpu(); run killer(); run daemon();
    run sub(0); run sub(NS - 1);
    run producer()
  }
}
#endif /* SPACE */
