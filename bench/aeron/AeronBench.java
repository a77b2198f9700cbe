/*
 * Aeron peer for shmbus-bench (bench/aeron/run.sh): the same cases over aeron:ipc with a
 * Java media driver, measured the way bench/e2e/bench_main.cpp measures shmbus.
 *
 *   driver DIR                       a media driver (Aeron's defaults) until stdin closes
 *   tput-sub DIR SIZE COUNT WARMUP   consumer: prints READY, then one JSON line
 *   tput-pub DIR SIZE COUNT WARMUP   producer: WARMUP + COUNT messages as fast as it can
 *   rtt-pong DIR SIZE COUNT WARMUP   echoes every message back (prints READY)
 *   rtt-ping DIR SIZE COUNT WARMUP   WARMUP + COUNT round trips, prints one JSON line
 *
 * Payload as in shmbus-bench: SIZE bytes copied from a template, word 0 = sequence,
 * last word = sequence ^ CHECK; the consumer checks both and the length. Producer:
 * ExclusivePublication.tryClaim + fill + commit (Aeron's zero-copy path, the
 * counterpart of shmbus claim/commit). Consumer: Subscription.poll with a fragment
 * limit of 10 (Aeron's samples' default), busy-spin on both sides.
 * Throughput: after WARMUP messages (JIT warm-up, not timed) the consumer skips 10 %
 * of COUNT, then stamps System.nanoTime() (CLOCK_MONOTONIC) every 8192 messages; the
 * figure is the median window rate, as in shmbus-bench. Round trip: WARMUP untimed
 * iterations, then COUNT timed ones of which the first min(1000, COUNT/10) are dropped.
 */
import io.aeron.Aeron;
import io.aeron.ExclusivePublication;
import io.aeron.Subscription;
import io.aeron.driver.MediaDriver;
import io.aeron.logbuffer.BufferClaim;
import io.aeron.logbuffer.FragmentHandler;
import org.agrona.DirectBuffer;
import org.agrona.MutableDirectBuffer;
import org.agrona.concurrent.UnsafeBuffer;

import java.io.IOException;
import java.util.Arrays;

public final class AeronBench
{
    static final long CHECK = 0xa5a55a5ac3c33c3cL;
    static final int WINDOW = 8192;
    // -Dbench.channel=aeron:ipc?term-length=2m: e.g. a log whose window matches shmbus's 1 MiB ring
    static final String CHANNEL = System.getProperty("bench.channel", "aeron:ipc");
    static final int PING_STREAM = 1001;
    static final int PONG_STREAM = 1002;
    static final int FRAGMENT_LIMIT = Integer.getInteger("bench.fragmentLimit", 10);

    static final UnsafeBuffer TEMPLATE = new UnsafeBuffer(new byte[65536]);

    static
    {
        for (int i = 0; i < TEMPLATE.capacity(); i++)
        {
            TEMPLATE.putByte(i, (byte)(i * 131 + 7));
        }
    }

    static void fill(final MutableDirectBuffer dst, final int off, final int size, final long w0, final long seq)
    {
        dst.putBytes(off, TEMPLATE, 0, size);
        dst.putLong(off, w0);
        if (size >= 16)
        {
            dst.putLong(off + size - 8, seq ^ CHECK);
        }
    }

    static boolean ok(final DirectBuffer b, final int off, final int len, final int size, final long seq)
    {
        return len == size && b.getLong(off) == seq && (len < 16 || b.getLong(off + len - 8) == (seq ^ CHECK));
    }

    static void send(final ExclusivePublication pub, final BufferClaim claim, final int size, final long w0,
        final long seq)
    {
        while (pub.tryClaim(size, claim) <= 0)
        {
            Thread.onSpinWait();
        }
        fill(claim.buffer(), claim.offset(), size, w0, seq);
        claim.commit();
    }

    static Aeron connect(final String dir)
    {
        return Aeron.connect(new Aeron.Context().aeronDirectoryName(dir));
    }

    static void ready()
    {
        System.out.println("READY");
        System.out.flush();
    }

    static double median(final double[] x, final int n)
    {
        final double[] v = Arrays.copyOf(x, n);
        Arrays.sort(v);
        return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    }

    // ------------------------------------------------------------------------------------
    static final class TputConsumer implements FragmentHandler
    {
        final int size;
        final long warmup;
        final long total;
        final long warm;  // first timed message (1-based sequence)
        final long[] stamps;
        int windows;
        long expect = 1;
        long errors;

        TputConsumer(final int size, final long count, final long warmup)
        {
            this.size = size;
            this.warmup = warmup;
            this.total = warmup + count;
            this.warm = warmup + Math.max(1, count / 10);
            this.stamps = new long[(int)(count / WINDOW) + 2];
        }

        public void onFragment(final DirectBuffer b, final int off, final int len, final io.aeron.logbuffer.Header h)
        {
            if (!ok(b, off, len, size, expect))
            {
                errors++;
            }
            if (expect >= warm && (expect - warm) % WINDOW == 0 && windows < stamps.length)
            {
                stamps[windows++] = System.nanoTime();
            }
            expect++;
        }
    }

    static void tputSub(final String dir, final int size, final long count, final long warmup)
    {
        try (Aeron aeron = connect(dir); Subscription sub = aeron.addSubscription(CHANNEL, PING_STREAM))
        {
            final TputConsumer c = new TputConsumer(size, count, warmup);
            ready();
            while (c.expect <= c.total)
            {
                if (sub.poll(c, FRAGMENT_LIMIT) == 0)
                {
                    Thread.onSpinWait();
                }
            }
            final long tLast = System.nanoTime();
            final double[] rates = new double[Math.max(c.windows - 1, 0)];
            for (int i = 0; i + 1 < c.windows; i++)
            {
                rates[i] = WINDOW * 1e9 / (c.stamps[i + 1] - c.stamps[i]);
            }
            final long timed = c.total - c.warm + 1;
            final double overall = timed * 1e9 / (tLast - c.stamps[0]);
            final double rate = rates.length >= 3 ? median(rates, rates.length) : overall;
            final double[] sorted = Arrays.copyOf(rates, rates.length);
            Arrays.sort(sorted);
            final double p10 = sorted.length > 0 ? sorted[sorted.length / 10] : 0;
            final double p90 = sorted.length > 0 ? sorted[sorted.length * 9 / 10] : 0;
            System.out.printf("{\"name\":\"tput.aeron\",\"kind\":\"throughput\",\"size\":%d,\"count\":%d," +
                "\"warmup\":%d,\"msgs_per_s\":%.0f,\"msgs_per_s_overall\":%.0f,\"window_p10\":%.0f," +
                "\"window_p90\":%.0f,\"errors\":%d}%n",
                size, count, warmup, rate, overall, p10, p90, c.errors);
            System.out.flush();
            if (c.errors != 0)
            {
                System.exit(1);
            }
        }
    }

    static void tputPub(final String dir, final int size, final long count, final long warmup)
    {
        try (Aeron aeron = connect(dir); ExclusivePublication pub = aeron.addExclusivePublication(CHANNEL, PING_STREAM))
        {
            while (!pub.isConnected())
            {
                Thread.onSpinWait();
            }
            final BufferClaim claim = new BufferClaim();
            final long total = warmup + count;
            for (long s = 1; s <= total; s++)
            {
                send(pub, claim, size, s, s);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    static final class Echo implements FragmentHandler
    {
        final ExclusivePublication pub;
        final BufferClaim claim = new BufferClaim();
        long got;

        Echo(final ExclusivePublication pub)
        {
            this.pub = pub;
        }

        public void onFragment(final DirectBuffer b, final int off, final int len, final io.aeron.logbuffer.Header h)
        {
            final long w0 = b.getLong(off);
            got++;
            send(pub, claim, len, w0, w0);
        }
    }

    static void rttPong(final String dir, final int size, final long count, final long warmup)
    {
        try (Aeron aeron = connect(dir);
            Subscription sub = aeron.addSubscription(CHANNEL, PING_STREAM);
            ExclusivePublication pub = aeron.addExclusivePublication(CHANNEL, PONG_STREAM))
        {
            final Echo echo = new Echo(pub);
            ready();
            final long total = warmup + count;
            while (echo.got < total)
            {
                if (sub.poll(echo, FRAGMENT_LIMIT) == 0)
                {
                    Thread.onSpinWait();
                }
            }
        }
    }

    static final class Pong implements FragmentHandler
    {
        final int size;
        long expect;
        boolean back;
        long errors;

        Pong(final int size)
        {
            this.size = size;
        }

        public void onFragment(final DirectBuffer b, final int off, final int len, final io.aeron.logbuffer.Header h)
        {
            if (!ok(b, off, len, size, expect))
            {
                errors++;
            }
            back = true;
        }
    }

    static void rttPing(final String dir, final int size, final long count, final long warmup)
    {
        try (Aeron aeron = connect(dir);
            ExclusivePublication pub = aeron.addExclusivePublication(CHANNEL, PING_STREAM);
            Subscription sub = aeron.addSubscription(CHANNEL, PONG_STREAM))
        {
            while (!pub.isConnected() || !sub.isConnected())
            {
                Thread.onSpinWait();
            }
            final BufferClaim claim = new BufferClaim();
            final Pong pong = new Pong(size);
            final long total = warmup + count;
            final long[] samples = new long[(int)count];
            long tBegin = 0;
            for (long i = 1; i <= total; i++)
            {
                if (i == warmup + 1)
                {
                    tBegin = System.nanoTime();
                }
                final long t0 = System.nanoTime();
                pong.expect = i;
                pong.back = false;
                send(pub, claim, size, i, i);
                while (!pong.back)
                {
                    if (sub.poll(pong, 1) == 0)
                    {
                        Thread.onSpinWait();
                    }
                }
                final long t1 = System.nanoTime();
                if (i > warmup)
                {
                    samples[(int)(i - warmup - 1)] = t1 - t0;
                }
            }
            final long tEnd = System.nanoTime();
            final int drop = (int)Math.min(1000, count / 10);
            final long[] v = Arrays.copyOfRange(samples, drop, (int)count);
            Arrays.sort(v);
            final int n = v.length;
            System.out.printf("{\"name\":\"rtt.aeron\",\"kind\":\"roundtrip\",\"size\":%d,\"count\":%d," +
                "\"warmup\":%d,\"msgs_per_s\":%.0f,\"p50_ns\":%d,\"p99_ns\":%d,\"p999_ns\":%d,\"p9999_ns\":%d," +
                "\"max_ns\":%d,\"errors\":%d}%n",
                size, count, warmup, count * 1e9 / (tEnd - tBegin), at(v, 0.50), at(v, 0.99), at(v, 0.999),
                at(v, 0.9999), v[n - 1], pong.errors);
            System.out.flush();
            if (pong.errors != 0)
            {
                System.exit(1);
            }
        }
    }

    // The same percentile rule as shmbus-bench: the ceil(q n)-th smallest.
    static long at(final long[] v, final double q)
    {
        long i = (long)Math.ceil(q * v.length);
        if (i > 0)
        {
            i--;
        }
        return v[(int)Math.min(i, v.length - 1)];
    }

    // ------------------------------------------------------------------------------------
    static void driver(final String dir) throws IOException
    {
        final MediaDriver.Context ctx = new MediaDriver.Context()
            .aeronDirectoryName(dir)
            .dirDeleteOnStart(true)
            .dirDeleteOnShutdown(true);
        try (MediaDriver ignored = MediaDriver.launch(ctx))
        {
            System.out.println("READY channel=" + CHANNEL + " threading=" + ctx.threadingMode() +
                " ipc.term.length=" + ctx.ipcTermBufferLength() +
                " conductor.idle=" + ctx.conductorIdleStrategy().getClass().getSimpleName());
            System.out.flush();
            while (System.in.read() >= 0)
            {
                // runs until the driver script closes our stdin
            }
        }
    }

    public static void main(final String[] args) throws Exception
    {
        if (args.length < 2)
        {
            System.err.println("usage: AeronBench driver DIR | {tput-sub,tput-pub,rtt-ping,rtt-pong} DIR SIZE COUNT WARMUP");
            System.exit(64);
        }
        final String mode = args[0];
        final String dir = args[1];
        if (mode.equals("driver"))
        {
            driver(dir);
            return;
        }
        final int size = Integer.parseInt(args[2]);
        final long count = Long.parseLong(args[3]);
        final long warmup = Long.parseLong(args[4]);
        if (size < 8 || size % 8 != 0)
        {
            throw new IllegalArgumentException("size must be a multiple of 8, >= 8");
        }
        switch (mode)
        {
            case "tput-sub" -> tputSub(dir, size, count, warmup);
            case "tput-pub" -> tputPub(dir, size, count, warmup);
            case "rtt-pong" -> rttPong(dir, size, count, warmup);
            case "rtt-ping" -> rttPing(dir, size, count, warmup);
            default -> throw new IllegalArgumentException("unknown mode " + mode);
        }
    }
}
