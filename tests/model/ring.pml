/*
 * Model of the multi-producer ring protocol of layout 2.0 as implemented in
 * shm/include/shmbus/shm/ring.hpp and recovery.hpp (docs/protocol.md "Multi-producer
 * claims (layout 2.0)", docs/memory-ordering.md P8/P8b, docs/model-checking.md):
 * RingWriter::claim_mp (tail read, help_pending, extend_zero_mp with refresh_limit and
 * min_open_claim, intent, pending CAS, complete_claim, wrap pad), commit and abort,
 * tethered and untethered readers (RingReader::poll), producers that die at any step,
 * and recover_dead_producer for each dead one. With BATCH, multi-frame claims
 * (try_claim_n, commit_n, abort_n; docs/protocol.md "Multi-frame claims", P1m). With
 * SP, single-producer mode instead, with a takeover by RingWriter::recover_sp.
 *
 * Abstractions
 *  - Positions and lengths are in frame UNITS (one unit = one 8-byte aligned chunk, at
 *    least a commit word). A frame of L units: unit 0 is the header (commit word and
 *    header.sequence), units 1..L-1 the payload. CAP units in the ring.
 *  - A cell (one unit of the ring) holds: the commit word (ctype, clen) and one tag
 *    cseq. In a DATA header cseq is header.sequence; in a PAD written for an aborted or
 *    reclaimed claim it is a ghost (the claim's last sequence, and the ghost cn the
 *    number of sequences the pad stands for, so readers can check that sequences
 *    are dense); in a payload cell it is the sequence of the producer that
 *    wrote the payload, and ctype = JUNK (payload read as a commit word is garbage).
 *    Zeroing sets everything to 0. A batch's frames are 1 unit each (header cells), so
 *    that a batch of 2 fits the ring of 4 units; frames with payload are checked as
 *    single-frame claims of 2 units.
 *  - Memory is sequentially consistent; each atomic { } is one machine operation (a
 *    load, a store, a CAS, the 16-byte tail CAS). Exceptions, each argued in
 *    docs/model-checking.md: read_claim (a seqlock) is one step; so is the owner's
 *    write of claim_pos and frame_len (made while its claim word is IDLE); one slot of
 *    min_open_claim (claim word, then claim_pos) is one step; the tethered cursors are
 *    read in one step.
 *  - glap[c] (ghost) is the absolute position cell c currently stands for: zeroing
 *    position q moves cell q%CAP to q. Every write to position q asserts glap == q.
 *
 * Compile-time switches (spin -DNAME=...):
 *   CAP NPROD NMSG NMSG0 NTETH NUNTETH MAXDIE MAXL   bounds
 *   REUSE     a dead producer's table entry is taken by a new producer once it is
 *             freed, and two reclaimers run recover_dead_producer for it concurrently
 *             (the daemon's reaper and a blocked publisher)
 *   RECLAIMFIX with REUSE: the reclaimer first CASes pid dead -> RECL (exclusive),
 *             and frees the entry (RECL -> 0) only at the end
 *   DEFECT1   v1 LIMIT: open claims do not bound the zeroing (expected to FAIL)
 *   DEFECT2   v1 MP commit: give back unused space by a tail CAS, then publish (FAIL)
 *   DEFECT3   v1 reclaimer: tail_seq > claim_seq taken as proof of the CAS, so an
 *             INTENT claim is padded (FAIL)
 *   WONLATE   complete_claim with its two CASes swapped: tail first, then WON (FAIL)
 *   NOSEQTAG  the claim word without the sequence: helpers and CASes compare the
 *             state only (FAIL)
 *   NOLAPCHECK untethered readers skip the P9 re-check (FAIL)
 *   TAIL1     read tail_pos and tail_seq in one step (the code loads them one by one)
 *   BATCH     a claim may also be a multi-frame claim (try_claim_n / commit_n): 2 frames
 *             of 1 unit as ONE ring claim of 2 units taking sequences S, S+1; the claim
 *             word and the pending tail carry the last one, T = S+1. The owner commits
 *             both (frame 1's word, then frame 0's), frame 0 only (a pad at frame 1,
 *             then frame 0's word), or aborts (one pad of 2 units at frame 0)
 *   BATCHP    with BATCH: producers k < BATCHP may take multi-frame claims (default all)
 *   B0FIRST   with BATCH: frame 0's commit word is stored FIRST (FAIL)
 *   FIRSTTAG  with BATCH: the claim word and pending tail carry the batch's FIRST
 *             sequence, so a completion moves tail_seq past one of its two (FAIL)
 *   SP        single-producer mode instead (claim_sp, extend_zero_sp, commit/commit_n/
 *             abort, tail_seq then tail_pos): a first owner of NMSG0 claims that may
 *             die at any step, then the next producer (NMSG2 claims) runs recover_sp
 *             first; tethered readers only. With BATCH, claims may be batches
 *   SPNOACCEPT with SP: recover_sp without the rule that accepts, at tail_pos, committed
 *             frames below the published tail_seq (before commit 5155feb) (FAIL)
 *   SPACCEPT1 with SP and BATCH: the rule accepts only ONE frame below tail_seq (as
 *             5155feb did, before multi-frame commits) (FAIL)
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
#ifdef SP
#ifndef NPROD
#define NPROD 1      /* the killer's slot 0 is the first owner */
#endif
#ifndef NMSG2
#define NMSG2 1      /* claims of the producer that takes over */
#endif
#endif
#ifndef BATCHP
#define BATCHP 3     /* BATCH: producers k < BATCHP may take multi-frame claims */
#endif
#ifndef NREUSE
#define NREUSE 1     /* messages of the producer that reuses slot 0 (REUSE) */
#endif

/* commit word types */
#define NONE  0
#define DATA  1
#define PAD   2
#define JUNK  4   /* a payload cell: never a valid commit word */

/* claim word states (layout.hpp kClaimIdle/Intent/Won) */
#define IDLE   0
#define INTENT 1
#define WON    2

#define RECL 9    /* RECLAIMFIX: the entry is being reclaimed */
#define FAR 255   /* "no bound" in a min() */

/* ---- ring cells ---- */
byte ctype[CAP];
byte clen[CAP];
byte cseq[CAP];
byte glap[CAP];    /* ghost */
byte cn[CAP];      /* ghost: the number of sequences a PAD that carries one stands for
                    * (its cseq is the claim's LAST sequence; 2 for a whole batch) */

/* ---- shared header ---- */
byte tail_pos = 0;     /* tail_pos and tail_seq = seq | pend << 56, one 16-byte CAS */
byte tail_seq = 1;
byte tail_pend = 0;    /* 0 or owner slot + 1 */
byte zero_mark = CAP;  /* [tail_pos, zero_mark) is zero: a fresh ring is all zero */
byte zero_intent = CAP;/* P9: announced before every zeroing */
byte zero_lock = 0;    /* 0 or owner slot + 1 */

/* ---- producer table (ProducerSlot): claim word = (c_seq, c_st) ---- */
byte c_st[3];
byte c_seq[3];
byte c_pos[3];
byte c_len[3];
byte owner[3];       /* 0 free, 1 first owner, 2 the owner that reused it, RECL */

/* ---- tethered cursors (FAR for absent readers) ---- */
byte cur[2];

/* ---- lifecycle ---- */
bool dead[3];      /* the slot's first owner died (only first owners die) */
bool pdone[3];     /* the slot's first owner finished all its messages */
byte ndead = 0;
byte nstarted = NPROD; /* producers that exist or will (a reuse adds one) */
byte ndone = 0;    /* producers finished, or dead and reclaimed */

/* ---- ghosts: the open claim of slot k, [g_lo, g_hi), from its pending CAS until
 *      its commit/abort word or the reclaimer's pad; g_own: which owner ---- */
bool g_open[3];
byte g_lo[3];
byte g_hi[3];
byte g_own[3];
byte g_n[3];       /* the open claim's number of sequences (frames) */
#ifdef SP
byte g_cend = 0;   /* SP: every position below it is a committed frame (or wrap pad) */
#endif

#define MSGS(k) ((k) == 0 -> NMSG0 : NMSG)
#define PADFOR(p, l) (((p) % CAP) + (l) > CAP -> CAP - ((p) % CAP) : 0)
#define MN(a, b) ((a) < (b) -> (a) : (b))

#ifdef DEFECT1
#define ICL(j) FAR   /* v1: open claims are not counted */
#else
#define ICL(j) (c_st[j] != IDLE -> c_pos[j] : FAR)
#endif
/* min(tail, open claims, cursors) in one step: used only as the wake-up condition of
 * a back-pressured producer; the limit that decides is scanned step by step. */
#define MINPOS MN(MN(MN(tail_pos, ICL(0)), MN(ICL(1), ICL(2))), MN(cur[0], cur[1]))

#ifdef NOSEQTAG
#define SEQIS(j, s) true
#else
#define SEQIS(j, s) (c_seq[j] == (s))
#endif

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
#ifdef SP
    assert(q >= g_cend);   /* never a frame readers may have read or be about to read */
#endif
    ctype[q % CAP] = 0; clen[q % CAP] = 0; cseq[q % CAP] = 0; cn[q % CAP] = 0;
    glap[q % CAP] = q
  }
}

/* complete_claim(j, P, S, L): CAS claim word INTENT(S) -> WON(S), then CAS the tail
 * {P, S|pend j} -> {P + pad + L, S+1}. Run by the owner, helpers and reclaimers. */
inline WONCAS(j, cS) {
  atomic { if :: c_st[j] == INTENT && SEQIS(j, cS) -> c_st[j] = WON :: else -> skip fi }
}
inline TAILCAS(j, cP, cS, cL) {
  atomic { if
           :: tail_pos == cP && tail_seq == cS && tail_pend == j + 1 ->
              tail_pos = cP + PADFOR(cP, cL) + cL; tail_seq = cS + 1; tail_pend = 0
           :: else -> skip
           fi }
}
inline COMPLETE(j, cP, cS, cL) {
#ifndef WONLATE
  WONCAS(j, cS);
  TAILCAS(j, cP, cS, cL)
#else
  TAILCAS(j, cP, cS, cL);
  WONCAS(j, cS)
#endif
}

/* help_pending(P, {S, pend j}): read j's record (read_claim); if it is INTENT or WON
 * of claim S at P, complete_claim(j). A helper never writes into the ring. */
inline HELP(j, P, S, hst, hS, hP, hL) {
  atomic { hst = c_st[j]; hS = c_seq[j]; hP = c_pos[j]; hL = c_len[j] };
  if
#ifndef NOSEQTAG
  :: (hst == INTENT || hst == WON) && hS == S && hP == P -> COMPLETE(j, P, S, hL)
#else
  :: (hst == INTENT || hst == WON) && hP == P -> COMPLETE(j, P, S, hL)
#endif
  :: else -> skip
  fi;
  atomic { hst = 0; hS = 0; hP = 0; hL = 0 }
}

/* The zero lock is free for k, or held by a producer proven dead (takeover). */
#define LOCKOK(k) (zero_lock == 0 || \
                   (zero_lock != k + 1 && dead[zero_lock - 1] && owner[zero_lock - 1] != 2))

/* extend_zero_mp(need). Spinning is modelled as blocking until something it depends
 * on changes, so a producer that can never proceed is a deadlock. A producer that
 * finds the lock taken goes back to the claim loop in the code; here it waits until
 * the lock is free, zero_mark is far enough, or the tail changed (it then retries and
 * may help). `lim` is the producer's cached limit (RingWriter::limit_). */
inline EXTEND(k, need, P, S, lim, m, q, i) {
  if
  :: atomic { LOCKOK(k) -> zero_lock = k + 1; q = zero_mark } ->
     if
     :: q < need ->
        if
        :: need > lim ->                                   /* refresh_limit() */
           m = tail_pos;                                   /* tail fetch_add(0) */
           atomic { m = MN(m, MN(cur[0], cur[1])); i = 0 };/* min_live_cursor */
#ifndef DEFECT1
           do                                              /* min_open_claim */
           :: i < NPROD -> atomic { if :: c_st[i] != IDLE && c_pos[i] < m -> m = c_pos[i]
                                      :: else -> skip fi; i++ }
           :: else -> break
           od;
#endif
           atomic { lim = m + CAP; m = 0; i = 0 }
        :: else -> skip
        fi;
        if
        :: need > lim ->                                   /* back_pressured */
           zero_lock = 0;
           atomic { (MINPOS + CAP >= need || zero_mark >= need || tail_pos != P) -> q = 0 }
        :: else ->
           if                               /* target: z + chunk, between need and lim */
           :: m = need
           :: lim > need -> m = lim
           fi;
           atomic { if :: zero_intent < m -> zero_intent = m :: else -> skip fi };  /* P9 */
           do
           :: q < m -> ZERO(q); q++
           :: else -> break
           od;
           atomic { zero_mark = m; m = 0 };
           atomic { zero_lock = 0; q = 0 }
        fi
     :: else -> atomic { zero_lock = 0; q = 0 }
     fi
  :: atomic { !LOCKOK(k) && (zero_mark >= need || tail_pos != P || tail_seq != S ||
                             tail_pend != 0) -> skip }
  fi
}

/* the reclaimer's pads of dead owner `inc` of slot k: exactly its open claim */
#define PADCHK(k, inc, bP, bF, bL) \
  assert(dead[k] && g_own[k] == inc && g_open[k] && g_lo[k] == bP && g_hi[k] == bF + bL); \
  WCHK(bF)
#define WPADCHK(k, inc, bP) \
  assert(dead[k] && g_own[k] == inc && g_open[k] && g_lo[k] == bP); WCHK(bP)

/* the owner's commit-word stores into its own claim (they find the word still 0) */
#define DATAW(q, sq, l) WCHK(q); assert(ctype[(q) % CAP] == NONE); \
  cseq[(q) % CAP] = sq; ctype[(q) % CAP] = DATA; clen[(q) % CAP] = l
#define PADW(q, sq, c, l) WCHK(q); assert(ctype[(q) % CAP] == NONE); \
  cseq[(q) % CAP] = sq; cn[(q) % CAP] = c; ctype[(q) % CAP] = PAD; clen[(q) % CAP] = l
#define CLOSED(k) g_open[k] = 0; g_n[k] = 0

/* Producer `inc` (1: the slot's first owner, 2: a later one) of table slot k. A claim
 * is nb frames (1, or 2 with BATCH) taking sequences S .. T = S + nb - 1. */
proctype producer(byte k; byte inc; byte nmsg) {
  byte n = 0, L, P, S, T, nb, pd, E, F, U, lim, m, q, i, hst, hS, hP, hL;
  {
    if
    :: inc == 1 -> skip
    :: else ->
end_reg: atomic { owner[k] == 0 -> owner[k] = inc; c_st[k] = IDLE; c_seq[k] = 0 }  /* register */
    fi;
    do
    :: atomic { n == nmsg -> if :: inc == 1 -> pdone[k] = 1 :: else -> skip fi; ndone++ }; break
    :: atomic { n < nmsg ->
         if                                       /* the frame length, in units */
         :: L = 1; nb = 1
         :: MAXL >= 2 -> L = 2; nb = 1
#ifdef BATCH
         :: k < BATCHP -> L = 2; nb = 2           /* try_claim_n(2): 2 frames of 1 unit */
#endif
         fi }
retry:
#ifdef TAIL1
       atomic { P = tail_pos; S = tail_seq; pd = tail_pend };
#else
       P = tail_pos;                                              /* tail_pos load */
       atomic { S = tail_seq; pd = tail_pend };                   /* tail_seq load */
#endif
       if
       :: pd != 0 -> HELP(pd - 1, P, S, hst, hS, hP, hL); pd = 0; goto retry
       :: else -> skip
       fi;
       if                                                         /* zero_mark load */
       :: atomic { P + PADFOR(P, L) + L + 1 > zero_mark -> E = P + PADFOR(P, L) + L } ->
          EXTEND(k, E + 1, P, S, lim, m, q, i); E = 0; goto retry
       :: atomic { P + PADFOR(P, L) + L + 1 <= zero_mark -> E = P + PADFOR(P, L) + L }
       fi;
       /* intent: claim_pos and frame_len while our claim word is IDLE, then INTENT(T).
        * One step: nobody reads the fields of an IDLE claim word (help_pending and
        * the reclaimer need INTENT or WON, min_open_claim skips IDLE). The claim word
        * and the pending tail carry the claim's LAST sequence T. */
       atomic {
#ifdef FIRSTTAG
         T = S;                                   /* (defect: the batch's first) */
#else
         T = S + nb - 1;
#endif
         c_pos[k] = P; c_len[k] = L; c_seq[k] = T; c_st[k] = INTENT };
       if                                                         /* the pending CAS */
       :: atomic { tail_pos == P && tail_seq == S && tail_pend == 0 ->
                   tail_seq = T; tail_pend = k + 1;
                   g_open[k] = 1; g_lo[k] = P; g_hi[k] = E; g_own[k] = inc; g_n[k] = nb }
       :: else -> c_st[k] = IDLE; atomic { E = 0; T = 0 }; goto retry   /* IDLE(T) */
       fi;
       COMPLETE(k, P, T, L);
       atomic { F = P + PADFOR(P, L);
                if                                                /* the wrap pad */
                :: F > P -> WCHK(P); assert(ctype[P % CAP] == NONE);
                            ctype[P % CAP] = PAD; clen[P % CAP] = F - P; cseq[P % CAP] = 0
                :: else -> skip
                fi };
       atomic {                                                   /* build */
#ifdef DEFECT2
         if :: U = L :: L > 1 -> U = 1 fi;          /* the caller used U of L units */
#else
         U = L;                                     /* claims never shrink */
#endif
         if                                         /* a batch's frames have no payload */
         :: U > 1 && nb == 1 -> WCHK(F + 1); ctype[(F + 1) % CAP] = JUNK; cseq[(F + 1) % CAP] = S
         :: else -> skip
         fi
       };
       if
       :: skip ->                                                 /* commit */
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
#ifdef BATCH
          if
          :: nb == 2 ->                                           /* commit_n(2) */
#ifndef B0FIRST
             atomic { DATAW(F + 1, S + 1, 1) };                   /* frame 1's word */
             atomic { DATAW(F, S, 1); CLOSED(k) }                 /* frame 0's, LAST */
#else
             atomic { DATAW(F, S, 1) };                           /* (defect) frame 0 first */
             atomic { DATAW(F + 1, S + 1, 1); CLOSED(k) }
#endif
          :: else ->
#endif
             atomic { DATAW(F, S, L); CLOSED(k) }
#ifdef BATCH
          fi
       :: nb == 2 ->                           /* commit_n(1): frames 1.. become a pad */
#ifndef B0FIRST
          atomic { PADW(F + 1, S + 1, 1, 1) };
          atomic { DATAW(F, S, 1); CLOSED(k) }                    /* frame 0's, LAST */
#else
          atomic { DATAW(F, S, 1) };
          atomic { PADW(F + 1, S + 1, 1, 1); CLOSED(k) }
#endif
#endif
       :: atomic { U == L ->                          /* abort (abort_n): one pad of L */
                   PADW(F, T, nb, L); CLOSED(k) }
       fi;
       atomic { c_st[k] = IDLE;                                   /* claim word IDLE(T) */
                n++; P = 0; S = 0; T = 0; nb = 0; E = 0; F = 0; U = 0; L = 0 }
    od
  } unless {
    /* dead: stops forever; its locals are forgotten (only shared memory remains) */
    atomic { inc == 1 && dead[k] ->
             n = 0; L = 0; P = 0; S = 0; T = 0; nb = 0; pd = 0; E = 0; F = 0; U = 0; lim = 0; m = 0; q = 0;
             i = 0; hst = 0; hS = 0; hP = 0; hL = 0 }
  }
}

#ifdef SP
/* extend_zero_sp(need): the cached limit `lim`, refresh_limit (tail RMW: the published
 * tail, at least our private tail tl; then the cursors), zeroing from our zero mark zm
 * to a target between need and the limit (the chunk), zero_intent announced first (P9),
 * zero_mark published. Back-pressure: the caller waits until a cursor moved (P7). */
inline SPEXTEND(need, tl, zm, lim, m, q) {
  do
  :: need > lim ->
     m = tail_pos;                                                /* fetch_add(0) */
     atomic { if :: m < tl -> m = tl :: else -> skip fi;
              m = MN(m, MN(cur[0], cur[1])); lim = m + CAP; m = 0 };
     if
     :: need > lim -> atomic { MN(tl, MN(cur[0], cur[1])) + CAP >= need -> skip }
     :: else -> break
     fi
  :: else -> break
  od;
  if
  :: m = need
  :: lim > need -> m = lim
  fi;
  atomic { if :: zero_intent < m -> zero_intent = m :: else -> skip fi; q = zm };
  do
  :: q < m -> ZERO(q); q++
  :: else -> break
  od;
  atomic { zm = m; zero_mark = m; m = 0; q = 0 }
}

/* Single producer `inc` (1: the first owner, 2: the next one). The claim, the frame and
 * the tail are the producer's own (tl, sq, zm: RingWriter::tail_, seq_, zero_mark_);
 * tail_seq and tail_pos are published after each commit (tail_seq first). */
proctype spprod(byte inc; byte nmsg) {
  byte n = 0, L, nb, P, F, E, tl, sq, zm, lim, m, q, t, l, s, st, s0;
  {
    if
    :: inc == 1 -> atomic { tl = tail_pos; sq = tail_seq; zm = zero_mark }   /* attach */
    :: else ->
       /* takes over once the first owner is gone (closed, or dead and released) */
       atomic { (pdone[0] || dead[0]) -> if :: dead[0] -> ndone++ :: else -> skip fi };
       /* recover_sp: walk the frames committed from tail_pos (at most a ring's worth),
        * accepting sequences from tail_seq on, or, at tail_pos itself, from below it
        * (a death between the stores of tail_seq and tail_pos) */
       P = tail_pos;
       atomic { sq = tail_seq; st = P; s0 = sq; q = 0 };
       do
       :: atomic { q < CAP -> t = ctype[P % CAP]; l = clen[P % CAP]; s = cseq[P % CAP]; q++ };
          if
          :: t == NONE || t == JUNK || l == 0 || (P % CAP) + l > CAP -> break
          :: else ->
#ifndef SPNOACCEPT
             if
#ifndef SPACCEPT1
             :: t == DATA && P == st && s != 0 && s < sq && sq - s <= CAP -> sq = s
#else
             :: t == DATA && P == st && s != 0 && s + 1 == sq -> sq = s   /* (defect) */
#endif
             :: else -> skip
             fi;
#endif
             if
             :: t == DATA && s != sq -> break      /* not the next frame of the dead owner */
             :: t == DATA && s == sq -> atomic { sq = s + 1; P = P + l }
             :: t != DATA -> P = P + l
             fi
          fi
       :: else -> break
       od;
       atomic { if :: sq < s0 -> sq = s0 :: else -> skip fi;    /* never below tail_seq */
                zm = zero_mark;
                if :: zm < P + 1 -> zm = P + 1 :: else -> skip fi;
                if :: zm > P + CAP -> zm = P + CAP :: else -> skip fi;
                q = P; t = 0; l = 0; s = 0; st = 0; s0 = 0 };
       do                                      /* re-zero what the dead owner may have */
       :: q < zm -> ZERO(q); q++               /* written into an uncommitted claim */
       :: else -> break
       od;
       atomic { tl = P; zero_mark = zm; q = 0; P = 0 };
       tail_seq = sq;
       tail_pos = tl
    fi;
    do
    :: atomic { n == nmsg -> pdone[inc - 1] = 1; ndone++ }; break
    :: atomic { n < nmsg ->
         if
         :: L = 1; nb = 1
         :: MAXL >= 2 -> L = 2; nb = 1
#ifdef BATCH
         :: L = 2; nb = 2                         /* try_claim_n(2): 2 frames of 1 unit */
#endif
         fi;
         P = tl; F = P + PADFOR(P, L); E = F + L }
       if                                                       /* claim_sp */
       :: E + 1 > zm -> SPEXTEND(E + 1, tl, zm, lim, m, q)
       :: else -> skip
       fi;
       if
       :: F > P ->                 /* the wrap pad, committed and published at claim time */
          atomic { PADW(P, 0, 0, F - P); g_cend = F };
          atomic { tl = F; tail_pos = F }
       :: else -> skip
       fi;
       atomic {                                                 /* build */
         if
         :: L > 1 && nb == 1 -> WCHK(F + 1); ctype[(F + 1) % CAP] = JUNK; cseq[(F + 1) % CAP] = sq
         :: else -> skip
         fi };
       if
       :: nb == 1 ->                                            /* commit */
          atomic { DATAW(F, sq, L); g_cend = E };
          atomic { tl = E; sq = sq + 1; tail_seq = sq };
          tail_pos = tl
       :: nb == 2 ->                                            /* commit_n(2) */
          atomic { DATAW(F + 1, sq + 1, 1) };                   /* frame 1's word */
          atomic { DATAW(F, sq, 1); g_cend = E };               /* frame 0's, LAST */
          atomic { tl = E; sq = sq + 2; tail_seq = sq };
          tail_pos = tl
       :: nb == 2 ->               /* commit_n(1): frame 1 given back (re-zeroed: unwritten) */
          atomic { DATAW(F, sq, 1); g_cend = F + 1 };
          atomic { tl = F + 1; sq = sq + 1; tail_seq = sq };
          tail_pos = tl
       :: atomic { PADW(F, 0, 0, L); g_cend = E; tl = E };     /* abort: no sequence used */
          tail_pos = tl
       fi;
       atomic { n++; L = 0; nb = 0; P = 0; F = 0; E = 0 }
    od
  } unless {
    atomic { inc == 1 && dead[0] ->
             n = 0; L = 0; nb = 0; P = 0; F = 0; E = 0; tl = 0; sq = 0; zm = 0; lim = 0; m = 0;
             q = 0; t = 0; l = 0; s = 0; st = 0; s0 = 0 }
  }
}
#endif

/* Any unfinished first owner may stop forever at any step (at most MAXDIE of them). */
proctype killer() {
end:
  do
  :: atomic { ndead < MAXDIE && !pdone[0] && !dead[0] -> dead[0] = 1; ndead++ }
  :: atomic { ndead < MAXDIE && NPROD > 1 && !pdone[1] && !dead[1] -> dead[1] = 1; ndead++ }
  :: atomic { ndead < MAXDIE && NPROD > 2 && !pdone[2] && !dead[2] -> dead[2] = 1; ndead++ }
  od
}

/* recover_dead_producer(k, dead owner `inc`), once its death is proven. */
proctype reclaimer(byte k; byte inc) {
  byte P, S, pd, hst, hS, hP, hL, bst, bS, bP, bL, bF, it;
  if
  :: pdone[k] -> skip
  :: dead[k] ->
#ifdef RECLAIMFIX
     if
     :: atomic { owner[k] == inc -> owner[k] = RECL } ->              /* exclusive */
#else
     if
     :: atomic { owner[k] == inc -> skip } ->                       /* pid check */
#endif
        do                                                        /* a. */
        :: it < 4 ->
           P = tail_pos;
           atomic { S = tail_seq; pd = tail_pend };
           if
           :: pd != k + 1 -> break
           :: else -> HELP(k, P, S, hst, hS, hP, hL); it++
           fi
        :: else -> break
        od;
        atomic { P = 0; S = 0; pd = 0; it = 0;                    /* b. read_claim */
                 bst = c_st[k]; bS = c_seq[k]; bP = c_pos[k]; bL = c_len[k];
                 bF = bP + PADFOR(bP, bL) };
#ifdef DEFECT3
        /* v1: tail_seq > claim_seq is taken as proof that k's CAS happened, so an
         * INTENT claim is padded as if it had won */
        if :: bst == INTENT && tail_seq > bS -> bst = WON :: else -> skip fi;
#endif
        if
        :: bst == WON ->
           atomic { if
                    :: bF > bP && ctype[bP % CAP] == NONE ->
                       WPADCHK(k, inc, bP);
                       ctype[bP % CAP] = PAD; clen[bP % CAP] = bF - bP; cseq[bP % CAP] = 0
                    :: else -> skip
                    fi };
           atomic { if
                    :: ctype[bF % CAP] == NONE ->
                       PADCHK(k, inc, bP, bF, bL);
                       /* the pad carries the claim word's (last) sequence */
                       ctype[bF % CAP] = PAD; clen[bF % CAP] = bL; cseq[bF % CAP] = bS;
                       cn[bF % CAP] = g_n[k]; CLOSED(k)
                    :: else -> skip
                    fi }
        :: else -> skip
        fi;
        atomic { c_st[k] = IDLE; c_seq[k] = bS };                 /* c. */
        atomic { if :: zero_lock == k + 1 -> zero_lock = 0 :: else -> skip fi };
        atomic {
#ifdef RECLAIMFIX
          owner[k] = 0;
#else
          if
          :: owner[k] == inc -> owner[k] = 0
          :: else -> goto lost
          fi;
#endif
          /* what the dead owner held is resolved: no claim of it is left open */
          assert(!(g_open[k] && g_own[k] == inc));
          ndone++;
#ifdef REUSE
          if :: k == 0 && inc == 1 -> nstarted++ :: else -> skip fi;   /* a new owner */
#endif
          bst = 0; bS = 0; bP = 0; bL = 0; bF = 0
        }
     :: else -> skip
     fi
  fi;
lost: skip
}

/* Readers. Every reader checks: no torn or unfinished frame, no payload cell read as
 * a header, sequences dense and in order (a PAD that carries a sequence is an aborted
 * or reclaimed claim, or the frames a batch did not commit: it stands for the cn
 * sequences up to and including its own). A reader ends when every producer is
 * finished or reclaimed and it has reached the tail; stopping anywhere else is a
 * permanent stall, which Spin reports as an invalid end state. */

#define READY(rp) (ctype[(rp) % CAP] == DATA || ctype[(rp) % CAP] == PAD || \
                   ctype[(rp) % CAP] == JUNK || (ndone == nstarted && (rp) == tail_pos))

#define AT_END(t) \
  assert(t == NONE && tail_pend == 0)

/* Tethered reader r (r < NTETH): its cursor bounds the zeroing, so a frame it reads
 * cannot change under it (the writers' assertions check that); it reads a frame and
 * releases it (P4) in one step. */
proctype treader(byte r) {
  byte rp = 0, exp = 1, t, l, s, c;
  do
  :: atomic {
       READY(rp) ->
       t = ctype[rp % CAP]; l = clen[rp % CAP]; s = cseq[rp % CAP]; c = cn[rp % CAP];
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
          :: t == PAD && s != 0 ->                     /* aborted or reclaimed claim */
             assert(s + 1 == exp + c);
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
       t = 0; l = 0; s = 0; c = 0
     }
  od
}

/* Untethered reader: nothing holds the producers back for it; it reads the commit
 * word and header, then the payload, then re-checks zero_intent (P9): if a zeroing
 * of the next lap was announced past its position, what it read may be torn and it
 * skips to the tail instead of delivering. */
proctype ureader() {
  byte rp = 0, exp = 1, t, l, s, c;
  bool ok;
  do
  :: atomic { (READY(rp) || zero_intent > rp + CAP) ->
              t = ctype[rp % CAP]; l = clen[rp % CAP]; s = cseq[rp % CAP]; c = cn[rp % CAP] };
     if
     :: t == DATA ->                                   /* the payload */
        ok = (l < 2 || (ctype[(rp + 1) % CAP] == JUNK && cseq[(rp + 1) % CAP] == s))
     :: else -> skip
     fi;
     if
#ifndef NOLAPCHECK
     :: atomic { zero_intent > rp + CAP ->                           /* lapped */
                 rp = tail_pos;
                 /* the reader's expectation (a ghost: the code checks no sequence) is
                  * the first sequence of the claim at tail_pos; a pending tail carries
                  * that claim's LAST sequence */
                 exp = tail_seq + 1 - (tail_pend != 0 -> g_n[tail_pend - 1] : 1) }
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
           :: t == PAD && s != 0 -> assert(s + 1 == exp + c); exp = s + 1
           :: else -> skip
           fi;
           rp = rp + l
        :: t == JUNK -> assert(false)                  /* a payload cell, same lap */
        :: else ->                                     /* 0: not yet */
           if
           :: atomic { ndone == nstarted && rp == tail_pos } -> AT_END(t); break
           :: else -> skip
           fi
        fi
     fi;
     t = 0; l = 0; s = 0; c = 0; ok = 0
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
#ifdef SP
    run spprod(1, NMSG0);
    run spprod(2, NMSG2);
    nstarted = 2;
#else
    do
    :: i < NPROD -> owner[i] = 1; run producer(i, 1, MSGS(i)); run reclaimer(i, 1); i++
    :: else -> break
    od;
#endif
#ifdef REUSE
    run reclaimer(0, 1);          /* a second reclaimer of slot 0's dead owner */
    run producer(0, 2, NREUSE);   /* takes slot 0 once it is free */
#endif
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
