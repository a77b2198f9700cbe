/*
 * Model of the v2 multi-producer ring protocol (/work/briefs/v2.md, docs/model-checking.md):
 * claim with the pending-tail helping, wrap pad, commit, abort, zero-ahead bounded by
 * LIMIT, tethered and untethered readers, producers that die at any step and the reaper
 * that runs steps a-c for them.
 *
 * Abstractions
 *  - Positions and lengths are in frame UNITS (one unit = one 8-byte aligned chunk, at
 *    least a commit word). A frame of L units: unit 0 is the header (commit word and
 *    header.sequence), units 1..L-1 the payload. CAP units in the ring.
 *  - A cell (one unit of the ring) holds: the commit word (ctype, clen, cown) and one
 *    tag cseq. In a header cell cseq is header.sequence; in a payload cell it is the
 *    sequence of the producer that wrote the payload, and ctype = JUNK (payload bytes
 *    read as a commit word are garbage). Zeroing sets everything to 0.
 *  - Memory is sequentially consistent; each atomic { } is one machine operation
 *    (a load, a store, a CAS, a 16-byte CAS on the tail).
 *  - glap[c] (ghost) is the absolute position cell c currently stands for: zeroing
 *    position q moves cell q%CAP to q. Every write to position q asserts glap == q.
 *
 * Compile-time switches (spin -DNAME=...):
 *   CAP NPROD NMSG NTETH NUNTETH MAXDIE   bounds
 *   DEFECT1  v1 LIMIT: open claims do not bound the zeroing (expected to FAIL)
 *   DEFECT2  v1 MP commit: give back unused space by a tail CAS, then publish (FAIL)
 *   DEFECT3  v1 reaper: tail_seq > claim_seq taken as proof of the CAS (FAIL)
 *   ASWRITTEN HELP(j) exactly as v2.md words it, without the hazard of HELP step h1
 *             (expected to FAIL: see docs/model-checking.md, "finding")
 *   NOLAPCHECK untethered readers skip the P9 re-check (expected to FAIL: shows the
 *             untethered configurations do lap the reader)
 */

#ifndef CAP
#define CAP 4
#endif
#ifndef NPROD
#define NPROD 2
#endif
#ifndef NMSG
#define NMSG 2
#endif
#ifndef NTETH
#define NTETH 1
#endif
#ifndef NUNTETH
#define NUNTETH 0
#endif
#ifndef NMSG0
#define NMSG0 NMSG   /* producer 0's message count (the others send NMSG) */
#endif
#ifndef MAXDIE
#define MAXDIE 1
#endif
#ifndef MAXL
#define MAXL 2
#endif



/* commit word types */
#define NONE  0
#define DATA  1
#define PAD   2
#define CLAIM 3
#define JUNK  4   /* a payload cell: never a valid commit word */

/* intent slot states */
#define IDLE     0
#define CLAIMING 1

#define FAR 255   /* "no bound" in a min() */

/* ---- ring cells ---- */
byte ctype[CAP];
byte clen[CAP];
byte cown[CAP];    /* owner slot + 1 of a CLAIM word */
byte cseq[CAP];
byte glap[CAP];    /* ghost */

/* ---- shared header ---- */
byte tail_pos = 0;     /* 16-byte tail word {tail_pos, W = seq | pend << 56} */
byte tail_seq = 1;
byte tail_pend = 0;    /* 0 or owner slot + 1 */
byte zero_mark = CAP;  /* [tail_pos, zero_mark) is zero: a fresh ring is all zero */
byte zero_intent = CAP;/* P9: announced before every zeroing */
byte zero_lock = 0;    /* 0 or owner slot + 1 */

/* ---- producer slots (intents) ---- */
byte i_state[3];
byte i_pos[3];
byte i_seq[3];
byte i_len[3];

/* ---- tethered cursors (FAR for absent readers) ---- */
byte cur[2];

/* ---- lifecycle ---- */
bool dead[3];
bool pdone[3];     /* finished all its messages */
byte ndead = 0;
byte ndone = 0;    /* producers finished, or dead and reaped */

/* ---- ghosts: the open claim of each producer, [g_lo, g_hi), from its tail CAS
 *      until its commit/abort word (or the reaper's pad) ---- */
bool g_open[3];
byte g_lo[3];
byte g_hi[3];

#define MSGS(k) ((k) == 0 -> NMSG0 : NMSG)
#define PADFOR(p, l) (((p) % CAP) + (l) > CAP -> CAP - ((p) % CAP) : 0)
#define MN(a, b) ((a) < (b) -> (a) : (b))

#ifdef DEFECT1
#define ICL(j) FAR   /* v1: open claims are not counted */
#else
#define ICL(j) (i_state[j] == CLAIMING -> i_pos[j] : FAR)
#endif
/* LIMIT - CAP, evaluated in one step: used only as the wake-up condition of a
 * back-pressured producer; the LIMIT that decides is scanned step by step. */
#define MINPOS MN(MN(MN(tail_pos, ICL(0)), MN(ICL(1), ICL(2))), MN(cur[0], cur[1]))

/* every write of a protocol word or payload to position q */
#define WCHK(q) assert(glap[(q) % CAP] == (q))

/* Zeroing position q (it overwrites position q - CAP): never an open claim, never a
 * byte a tethered reader has not released. */
inline ZERO(q) {
  atomic {
    assert(glap[q % CAP] + CAP == q || glap[q % CAP] == q);
    assert(!(g_open[0] && g_lo[0] + CAP <= q && q < g_hi[0] + CAP));
    assert(!(g_open[1] && g_lo[1] + CAP <= q && q < g_hi[1] + CAP));
    assert(!(g_open[2] && g_lo[2] + CAP <= q && q < g_hi[2] + CAP));
    assert(q < cur[0] + CAP && q < cur[1] + CAP);
    ctype[q % CAP] = 0; clen[q % CAP] = 0; cown[q % CAP] = 0; cseq[q % CAP] = 0;
    glap[q % CAP] = q
  }
}

/* COMPLETE(j) (step 5): the wrap pad and header.sequence, the CLAIM word (each a
 * CAS 0 -> value, or a store of the same value), then the tail CAS
 * {P, S|pend j} -> {E, S+1}. Run by the owner, by helpers and by the reaper (step a).
 * Local arithmetic is folded into the neighbouring shared access (one step each). */
inline COMPLETE(j, cP, cS, cL, cpad, cF) {
  atomic {
    cpad = PADFOR(cP, cL);
    cF = cP + cpad;
    if
    :: cpad > 0 && ctype[cP % CAP] == NONE ->
       WCHK(cP); ctype[cP % CAP] = PAD; clen[cP % CAP] = cpad       /* wrap pad (P3) */
    :: else -> skip
    fi;
    WCHK(cF); cseq[cF % CAP] = cS                                  /* header.sequence */
  };
  atomic { if
           :: ctype[cF % CAP] == NONE ->
              WCHK(cF); ctype[cF % CAP] = CLAIM; clen[cF % CAP] = cL; cown[cF % CAP] = j + 1
           :: else -> skip
           fi };
  atomic { if
           :: tail_pos == cP && tail_seq == cS && tail_pend == j + 1 ->
              tail_pos = cF + cL; tail_seq = cS + 1; tail_pend = 0
           :: else -> skip
           fi;
           cpad = 0; cF = 0 }
}

/* HELP(j), after a tail read {P, S|pend j}: complete j's claim.
 * h1 (not in v2.md's wording; without it the model finds a stale helper writing into
 *     the next lap, see ASWRITTEN and docs/model-checking.md): publish the helper's
 *     own intent at P (state CLAIMING, so it bounds LIMIT like an open claim), then
 *     re-read the tail and help only if it is still {P, S|pend j}.
 * h2 read slot j's intent; if it matches {P, S}, COMPLETE(j). */
inline HELP(me, j, P, S, hP, hS, hL, cpad, cF) {
#ifndef ASWRITTEN
  atomic { i_pos[me] = P; i_seq[me] = S; i_len[me] = 0; i_state[me] = CLAIMING };   /* h1 */
  if
  :: atomic { tail_pos == P && tail_seq == S && tail_pend == j + 1 ->
              hP = i_pos[j]; hS = i_seq[j]; hL = i_len[j] }                   /* h1, h2 */
#else
  atomic { hP = i_pos[j]; hS = i_seq[j]; hL = i_len[j] };                      /* h2 */
#endif
     if
     :: hP == P && hS == S -> COMPLETE(j, hP, hS, hL, cpad, cF)
     :: else -> skip
     fi
#ifndef ASWRITTEN
  :: else -> skip
  fi;
  atomic { i_state[me] = IDLE; hP = 0; hS = 0; hL = 0 }
#else
  ;
  atomic { hP = 0; hS = 0; hL = 0 }
#endif
}

/* P2: extend zero_mark to at least `need`, under zero_lock (owner slot + 1; a dead
 * owner's lock may be taken over: zeroing is idempotent). Blocks (instead of
 * spinning) while the lock is held by a live producer or while back-pressured, so a
 * producer that can never proceed shows up as a deadlock. */
inline EXTEND(k, need, P, m, q) {
  if
  :: atomic { (zero_lock == 0 || dead[zero_lock - 1]) && zero_mark < need -> zero_lock = k + 1 } ->
     m = tail_pos;                                /* LIMIT: the tail first ... */
     atomic {
       /* ... then the slots. LIMIT = min(tail_pos, open claims (CLAIMING intents),
        * tethered cursors) + CAP. A claim whose tail CAS comes after the tail read
        * has P >= that tail; one whose CAS came before it is committed or shows
        * CLAIMING here. (Slots are read in one step: each only moves forward, so
        * reading them one by one could only give a smaller, safer minimum.) */
#ifndef DEFECT1
       m = MN(m, MN(ICL(0), MN(ICL(1), ICL(2))));
#endif
       m = MN(m, MN(cur[0], cur[1]));
       if
       :: need > m + CAP -> zero_lock = 0          /* back-pressure */
       :: else ->                                  /* P9: announce, then zero */
          if :: zero_intent < m + CAP -> zero_intent = m + CAP :: else -> skip fi;
          q = zero_mark
       fi
     };
     if
     :: zero_lock != k + 1 ->                     /* back-pressured: wait for a change */
        atomic { (MINPOS + CAP >= need || zero_mark >= need || tail_pos != P) -> m = 0 }
     :: else ->
        do
        :: q < m + CAP -> ZERO(q); q++
        :: else -> break
        od;
        atomic { zero_mark = m + CAP; zero_lock = 0; m = 0; q = 0 }
     fi
  :: atomic { zero_mark >= need -> skip }         /* someone else zeroed it */
  fi
}

/* the reaper's pad of dead producer k's claim at F: exactly that claim, still open */
#define PADCHK(k, bP, bF, bL) \
  assert(dead[k] && g_open[k] && g_lo[k] == bP && g_hi[k] == bF + bL); WCHK(bF)

proctype producer(byte k) {
  byte n = 0, L, P, S, pd, E, F, U, m, q, hP, hS, hL, cpad, cF;
  {
    do
    :: atomic { n == MSGS(k) -> pdone[k] = 1; ndone++ }; break
    :: atomic { n < MSGS(k) ->
         if                                       /* the frame length, in units */
         :: L = 1
         :: MAXL >= 2 -> L = 2
         fi }
retry:
       atomic { P = tail_pos; S = tail_seq; pd = tail_pend;                  /* step 1 */
                E = P + PADFOR(P, L) + L };                                  /* step 2 */
       if
       :: pd != 0 -> HELP(k, pd - 1, P, S, hP, hS, hL, cpad, cF); goto retry
       :: else -> skip
       fi;
       if
       :: atomic { E + 1 > zero_mark -> skip } ->                           /* step 2 */
          EXTEND(k, E + 1, P, m, q); goto retry
       :: atomic { E + 1 <= zero_mark ->                                    /* step 3 */
                   i_pos[k] = P; i_seq[k] = S; i_len[k] = L; i_state[k] = CLAIMING }
       fi;
       if                                                                   /* step 4 */
       :: atomic { tail_pos == P && tail_seq == S && tail_pend == 0 ->
                   tail_pend = k + 1; g_open[k] = 1; g_lo[k] = P; g_hi[k] = E }
       :: else -> i_state[k] = IDLE; goto retry
       fi;
       COMPLETE(k, P, S, L, cpad, cF);                                      /* step 5 */
       atomic {                                                             /* step 6 */
         F = P + PADFOR(P, L);
#ifdef DEFECT2
         if :: U = L :: L > 1 -> U = 1 fi;          /* the caller used U of L units */
#else
         U = L;                                     /* claims never shrink */
#endif
         if
         :: U > 1 -> WCHK(F + 1); ctype[(F + 1) % CAP] = JUNK; cseq[(F + 1) % CAP] = S
         :: else -> skip
         fi
       };
       if                                                                   /* step 7 */
       :: skip ->                                                           /* commit */
#ifdef DEFECT2
          if                      /* v1: give back [F+U, E) by a tail CAS before the commit */
          :: U < L -> atomic { if
                               :: tail_pos == E && tail_seq == S + 1 && tail_pend == 0 ->
                                  tail_pos = F + U; g_hi[k] = F + U; L = U
                               :: else -> skip
                               fi }
          :: else -> skip
          fi;
#endif
          atomic { WCHK(F); assert(ctype[F % CAP] == CLAIM && cown[F % CAP] == k + 1);
                   ctype[F % CAP] = DATA; clen[F % CAP] = L; g_open[k] = 0 }
       :: atomic { U == L ->                                                /* abort */
                   WCHK(F); assert(ctype[F % CAP] == CLAIM && cown[F % CAP] == k + 1);
                   ctype[F % CAP] = PAD; g_open[k] = 0 }
       fi;
       atomic { i_state[k] = IDLE;
                n++; P = 0; S = 0; pd = 0; E = 0; F = 0; U = 0; L = 0 }
    od
  } unless {
    /* dead: stops forever; its locals are forgotten (only shared memory remains) */
    atomic { dead[k] -> n = 0; L = 0; P = 0; S = 0; pd = 0; E = 0; F = 0; U = 0; m = 0; q = 0;
             hP = 0; hS = 0; hL = 0; cpad = 0; cF = 0 }
  }
}

/* Any unfinished producer may stop forever at any step (at most MAXDIE of them). */
proctype killer() {
end:
  do
  :: atomic { ndead < MAXDIE && !pdone[0] && !dead[0] -> dead[0] = 1; ndead++ }
  :: atomic { ndead < MAXDIE && NPROD > 1 && !pdone[1] && !dead[1] -> dead[1] = 1; ndead++ }
  :: atomic { ndead < MAXDIE && NPROD > 2 && !pdone[2] && !dead[2] -> dead[2] = 1; ndead++ }
  od
}

/* Reclaim of dead producer k (its death is proven by the daemon's own record). */
proctype reaper(byte k) {
  byte P, S, pd, hP, hS, hL, cpad, cF, bP, bS, bL, bF, s;
  if
  :: pdone[k] -> skip
  :: dead[k] ->
     atomic { P = tail_pos; S = tail_seq; pd = tail_pend };                  /* step a */
     if
     :: pd == k + 1 ->
        atomic { hP = i_pos[k]; hS = i_seq[k]; hL = i_len[k] };
        if
        :: hP == P && hS == S -> COMPLETE(k, hP, hS, hL, cpad, cF)
        :: else -> skip
        fi
     :: else -> skip
     fi;
     if                                                                      /* step b */
     :: atomic { i_state[k] == CLAIMING ->
                 bP = i_pos[k]; bS = i_seq[k]; bL = i_len[k]; bF = bP + PADFOR(bP, bL) };
#ifdef DEFECT3
        /* v1: tail_seq > claim_seq is taken as proof that k's tail CAS happened, so
         * whatever uncommitted frame is at the recorded position is padded (a CAS from
         * the word read: 0, or a CLAIM word of any owner) */
        if
        :: atomic { tail_seq > bS && (ctype[bF % CAP] == NONE || ctype[bF % CAP] == CLAIM) ->
                    PADCHK(k, bP, bF, bL); ctype[bF % CAP] = PAD; clen[bF % CAP] = bL; g_open[k] = 0 }
        :: else -> skip
        fi
#else
        s = cseq[bF % CAP];
        atomic { if
                 :: ctype[bF % CAP] == CLAIM && cown[bF % CAP] == k + 1 && clen[bF % CAP] == bL && s == bS ->
                    PADCHK(k, bP, bF, bL); ctype[bF % CAP] = PAD; g_open[k] = 0
                 :: else -> skip
                 fi }
#endif
     :: else -> skip
     fi;
     atomic {                                                                /* step c */
       i_state[k] = IDLE;
       if :: zero_lock == k + 1 -> zero_lock = 0 :: else -> skip fi;
       ndone++;
       P = 0; S = 0; pd = 0; hP = 0; hS = 0; hL = 0; cpad = 0; cF = 0; bP = 0; bS = 0; bL = 0; bF = 0; s = 0
     }
  fi
}

/* Readers (P1 subscriber side). Every reader checks: no torn or unfinished frame, no
 * payload cell read as a header, sequences dense and in order (a PAD that carries a
 * sequence is an aborted or reaped claim). A reader ends when every producer is
 * finished or reaped and it has reached the tail; stopping anywhere else is a
 * permanent stall, which Spin reports as an invalid end state. */

/* A frame at rp as the reader sees it: sets t, l, s and ok (payload complete). */
#define READY(rp) (ctype[(rp) % CAP] == DATA || ctype[(rp) % CAP] == PAD || \
                   ctype[(rp) % CAP] == JUNK || (ndone == NPROD && (rp) == tail_pos))

/* The end: every producer finished or reaped, the reader at the tail, the tail
 * resolved, and (tethered) every sequence accounted for. */
#define AT_END(t) \
  assert(t == NONE && tail_pend == 0)

/* Tethered reader r (r < NTETH): its cursor bounds the zeroing, so a frame it reads
 * cannot change under it (the writers' assertions check that); it reads a frame and
 * releases it (P4) in one step. */
proctype treader(byte r) {
  byte rp = 0, exp = 1, t, l, s;
  do
  :: atomic {
       READY(rp) ->
       t = ctype[rp % CAP]; l = clen[rp % CAP]; s = cseq[rp % CAP];
       assert(t != JUNK);                              /* never a payload cell */
       assert(glap[rp % CAP] == rp);                   /* our lap: unread bytes intact */
       if
       :: t == DATA || t == PAD ->
          assert(l >= 1 && (rp % CAP) + l <= CAP);     /* never crosses the ring end */
          if
          :: t == DATA ->
             /* no torn or unfinished frame: the payload cell carries this frame's seq */
             assert(l < 2 || (ctype[(rp + 1) % CAP] == JUNK && cseq[(rp + 1) % CAP] == s));
             assert(s == exp);                         /* dense, in order */
             exp = s + 1
          :: t == PAD && s != 0 ->                     /* aborted or reaped claim */
             assert(s == exp);
             exp = s + 1
          :: else -> skip                              /* wrap pad */
          fi;
          rp = rp + l;
          cur[r] = rp                                  /* release (P4) */
       :: else ->                                      /* the end: 0 at the tail */
          AT_END(t);
          assert(exp == tail_seq);                     /* every sequence accounted for */
          break
       fi;
       t = 0; l = 0; s = 0
     }
  od
}

/* Untethered reader: nothing holds the producers back for it; it reads the commit
 * word and header, then the payload, then re-checks zero_intent (P9): if a zeroing
 * of the next lap was announced past its position, what it read may be torn and it
 * skips to the tail instead of delivering. */
proctype ureader() {
  byte rp = 0, exp = 1, t, l, s;
  bool ok;
  do
  :: atomic { (READY(rp) || zero_intent > rp + CAP) ->
              t = ctype[rp % CAP]; l = clen[rp % CAP]; s = cseq[rp % CAP] };
     if
     :: t == DATA ->                                   /* the payload */
        ok = (l < 2 || (ctype[(rp + 1) % CAP] == JUNK && cseq[(rp + 1) % CAP] == s))
     :: else -> skip
     fi;
     if
#ifndef NOLAPCHECK
     :: atomic { zero_intent > rp + CAP -> rp = tail_pos; exp = tail_seq }   /* lapped */
#endif
     :: else ->
        if
        :: t == DATA || t == PAD ->
           assert(l >= 1 && (rp % CAP) + l <= CAP);
           if
           :: t == DATA ->
              assert(ok);                              /* no torn or unfinished frame */
              assert(s == exp);
              exp = s + 1
           :: t == PAD && s != 0 -> assert(s == exp); exp = s + 1
           :: else -> skip
           fi;
           rp = rp + l
        :: t == JUNK -> assert(false)                  /* a payload cell, same lap */
        :: else ->                                     /* 0 or CLAIM: not yet */
           if
           :: atomic { ndone == NPROD && rp == tail_pos } -> AT_END(t); break
           :: else -> skip
           fi
        fi
     fi;
     t = 0; l = 0; s = 0; ok = 0
  od
}

init {
  byte i;
  atomic {
    i = 0;
    do
    :: i < CAP -> glap[i] = i; i++
    :: else -> break
    od;
    cur[0] = FAR; cur[1] = FAR;
    i = 0;
    do
    :: i < NTETH -> cur[i] = 0; i++
    :: else -> break
    od;
    i = 0;
    do
    :: i < NPROD -> run producer(i); run reaper(i); i++
    :: else -> break
    od;
    i = 0;
    do
    :: i < NTETH -> run treader(i); i++
    :: else -> break
    od;
    i = 0;
    do
    :: i < NUNTETH -> run ureader(); i++
    :: else -> break
    od;
    run killer();
    i = 0
  }
}
