// olivine's fast Verilator harness: the core's host sequence and HBM model in plain C++.
//
// No Python runs in the cycle loop. sim/fastsim.py generates `olivine_ports.h` (the top's AXI
// ports bound to the Verilated model's members), builds this file with Verilator and runs it:
//
//   batch executable (default):  olivine_fastsim SCRIPT      (SCRIPT: one command per line, below)
//   trace builds (-DOLIVINE_TRACE_FST with --trace-fst, -DOLIVINE_TRACE_VCD with --trace): the
//   executable plus the `waves` command;
//   shared library (-DOLIVINE_SHARED, built with --vpi and either --public-flat-rw or a generated
//   .vlt naming the public signals): the C API at the end, called through ctypes by
//   sim/fastsim.py's DebugHandle.
//
// The HBM model (CORE_INTERFACE.md section 5), one per m_axi_hbm<k> port:
//   * a byte array of `channel_bytes`; addresses are byte addresses inside the channel;
//   * up to `outstanding` read bursts accepted (ARREADY low when full); the first R beat of a burst
//     is presented `read_latency` cycles after its AR handshake (1 = the next cycle), bursts are
//     answered in order (IDs echoed);
//   * bandwidth: a channel moves at most `bytes_per_cycle` bytes per cycle in each direction. A
//     credit starts full at one beat, every R (W) beat spends one beat of bytes, every cycle adds
//     `bytes_per_cycle` (capped at one beat); RVALID (WREADY) needs a full beat of credit. With
//     bytes_per_cycle >= beat bytes a burst streams one beat per cycle; with half a beat, one
//     beat every two cycles;
//   * writes: up to `outstanding` write bursts in flight (AW accepted, B not yet taken); WREADY
//     only while an accepted AW has beats left; WSTRB selects the bytes written; B is presented
//     the cycle after the last W beat;
//   * a beat any byte of which lies outside the channel answers SLVERR (RRESP = 2, data 0; the
//     beat is not written and BRESP = 2 for its burst); INCR and FIXED bursts, any AxSIZE up to the
//     bus width (narrow beats use their byte lanes);
//   * pauses (`pause_permille` P > 0): every cycle each of the five channels (AR, R, AW, W, B) is
//     paused with probability P / 1000, drawn from a generator seeded by `seed` and the channel
//     number (the same script gives the same pauses): a paused ARREADY / AWREADY / WREADY is low,
//     a paused RVALID / BVALID is not raised (one already raised stays until its handshake, as
//     AXI requires). This is the backpressure the cocotb testbench's AxiRam pause generators give;
//   * counters, as the core counts them (hw/core.py): bytes read = R beats x beat bytes; bytes
//     written = the WSTRB bytes of the W beats; bursts; SLVERR beats.
//
// Script commands (executed in order; numbers decimal or 0x hex):
//   channel_bytes N | read_latency N | bytes_per_cycle N | outstanding N | pause_permille N | seed N
//                           (HBM parameters)
//   load K ADDR FILE        copy FILE's bytes into channel K at ADDR
//   reset N                 hold rst for N cycles, then step OLIVINE_RESET_LATENCY cycles (the cycles
//                           a top that registers rst takes to leave reset; olivine_ports.h)
//   write OFFSET VALUE      AXI4-Lite write
//   read NAME OFFSET        AXI4-Lite read, reported under NAME in the result
//   start                   write CTRL = 1 (ap_start) and start counting run cycles
//   wait BUDGET MODE POLL   run until done (MODE interrupt: the interrupt pin; poll: read CTRL every
//                           POLL cycles until ap_done) or BUDGET cycles after start
//   dump K ADDR LEN FILE    write LEN bytes of channel K from ADDR to FILE
//   waves FILE              (trace builds only: FST or VCD as built) record a trace from now on
//   timeline FILE           (tops with probe ports) record every unit's instruction starts and ends:
//                           lines `S UNIT CYCLE OFFSET` (the controller hands UNIT the instruction at
//                           word OFFSET at this clock edge) and `E UNIT CYCLE` (UNIT's done or fault
//                           pulse), CYCLE counted from the last `start`
//   result FILE             write the JSON result (at the end; also written when a step fails)

#include <verilated.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(OLIVINE_TRACE_FST)
#include <verilated_fst_c.h>
#define OLIVINE_TRACE 1
typedef VerilatedFstC TraceFile;
#elif defined(OLIVINE_TRACE_VCD)
#include <verilated_vcd_c.h>
#define OLIVINE_TRACE 1
typedef VerilatedVcdC TraceFile;
#endif
#ifdef OLIVINE_SHARED
#include <verilated_vpi.h>
#endif

// A port of the Verilated model: the member's address and width. Verilator stores ports of up to
// 8/16/32/64 bits in uint8/16/32/64_t and wider ones as arrays of 32-bit words, all little endian,
// so a port's bytes are its first ceil(bits / 8) bytes in memory.
struct Pin {
    void* ptr = nullptr;
    int bits = 0;
    explicit operator bool() const { return ptr != nullptr; }
    int storage_bytes() const {
        return bits <= 8 ? 1 : bits <= 16 ? 2 : bits <= 32 ? 4 : bits <= 64 ? 8 : 4 * ((bits + 31) / 32);
    }
    uint64_t get() const {
        if (!ptr) return 0;
        switch (storage_bytes()) {
            case 1: return *static_cast<uint8_t*>(ptr);
            case 2: return *static_cast<uint16_t*>(ptr);
            case 4: return *static_cast<uint32_t*>(ptr);
            default: { uint64_t v; std::memcpy(&v, ptr, 8); return v; }
        }
    }
    void set(uint64_t v) const {
        if (!ptr) return;
        switch (storage_bytes()) {
            case 1: *static_cast<uint8_t*>(ptr) = static_cast<uint8_t>(v); break;
            case 2: *static_cast<uint16_t*>(ptr) = static_cast<uint16_t>(v); break;
            case 4: *static_cast<uint32_t*>(ptr) = static_cast<uint32_t>(v); break;
            default: std::memcpy(ptr, &v, 8); break;
        }
    }
    const uint8_t* bytes() const { return static_cast<const uint8_t*>(ptr); }
    uint8_t* bytes_mut() const { return static_cast<uint8_t*>(ptr); }
};

struct AxiPins {  // one full AXI4 master of the top (the model is the slave)
    Pin arid, araddr, arlen, arsize, arburst, arvalid, arready;
    Pin rid, rdata, rresp, rlast, rvalid, rready;
    Pin awid, awaddr, awlen, awsize, awburst, awvalid, awready;
    Pin wdata, wstrb, wlast, wvalid, wready;
    Pin bid, bresp, bvalid, bready;
};

struct LitePins {  // the AXI4-Lite slave s_axi_control (the harness is the master)
    Pin awaddr, awvalid, awready, wdata, wstrb, wvalid, wready, bresp, bvalid, bready;
    Pin araddr, arvalid, arready, rdata, rresp, rvalid, rready;
};

struct ProbePins {  // one unit's instruction probes (optional ports probe_<unit>_start/_end/_offset)
    Pin start, end, offset;
};

#include "olivine_ports.h"  // generated: `Top`, OLIVINE_CHANNELS, bind_ports(Top*, LitePins&, AxiPins*, Pin& clk, Pin& rst, Pin& interrupt),
                            // OLIVINE_PROBES, PROBE_UNITS, bind_probes(Top*, ProbePins*)

static const uint64_t RESP_OKAY = 0, RESP_SLVERR = 2;

struct HbmParams {
    uint64_t channel_bytes = 1ull << 24;
    uint64_t read_latency = 8;
    uint64_t bytes_per_cycle = 0;  // 0: one beat per cycle
    uint64_t outstanding = 8;
    uint64_t pause_permille = 0;  // 0: never paused
    uint64_t seed = 0;
};

struct HbmCounters {
    uint64_t read_bytes = 0, write_bytes = 0, read_bursts = 0, write_bursts = 0, slverr_beats = 0;
};

class HbmChannel {
   public:
    HbmChannel(const AxiPins& pins, HbmParams params, uint64_t index = 0)
        : p_(pins), params_(params), beat_bytes_(pins.rdata.bits / 8), mem_(params.channel_bytes, 0) {
        rng_ = (params_.seed + 1) * 0x9E3779B97F4A7C15ull ^ (index + 1) * 0xBF58476D1CE4E5B9ull;
        if (params_.pause_permille > 1000) params_.pause_permille = 1000;
        if (params_.bytes_per_cycle == 0) params_.bytes_per_cycle = beat_bytes_;
        if (params_.read_latency < 1) params_.read_latency = 1;
        if (params_.outstanding < 1) params_.outstanding = 1;
        rcredit_ = wcredit_ = beat_bytes_;
    }

    std::vector<uint8_t>& memory() { return mem_; }
    const HbmCounters& counters() const { return counters_; }
    const HbmParams& params() const { return params_; }

    // Before the clock edge: present the slave's outputs for this cycle (depend on state only).
    void drive(uint64_t cycle) {
        bool pause_ar = paused(), pause_r = paused(), pause_aw = paused(), pause_w = paused(), pause_b = paused();
        p_.arready.set(!pause_ar && reads_.size() < params_.outstanding);
        bool rv = !reads_.empty() && reads_.front().ready_cycle <= cycle && rcredit_ >= beat_bytes_ &&
                  (r_raised_ || !pause_r);
        p_.rvalid.set(rv);
        if (rv) {
            Burst& b = reads_.front();
            p_.rid.set(b.id);
            p_.rlast.set(b.beat == b.len);
            uint64_t lo, hi;
            beat_lanes(b, lo, hi);
            uint8_t* data = p_.rdata.bytes_mut();
            std::memset(data, 0, beat_bytes_);
            bool bad = beat_outside(b);
            if (!bad) std::memcpy(data + lo, &mem_[beat_addr(b)], hi - lo);
            p_.rresp.set(bad ? RESP_SLVERR : RESP_OKAY);
        }
        p_.awready.set(!pause_aw && writes_.size() + responses_.size() < params_.outstanding);
        p_.wready.set(!pause_w && !writes_.empty() && wcredit_ >= beat_bytes_);
        bool bv = !responses_.empty() && responses_.front().ready_cycle <= cycle && (b_raised_ || !pause_b);
        p_.bvalid.set(bv);
        if (bv) {
            p_.bid.set(responses_.front().id);
            p_.bresp.set(responses_.front().error ? RESP_SLVERR : RESP_OKAY);
        }
    }

    // After the combinational settle, before the edge: take the handshakes of this cycle.
    void sample(uint64_t cycle) {
        bool r_fire = p_.rvalid.get() && p_.rready.get();
        bool w_fire = p_.wready.get() && p_.wvalid.get();
        r_raised_ = p_.rvalid.get() && !r_fire;  // a raised RVALID / BVALID waits for its handshake
        b_raised_ = p_.bvalid.get() && !p_.bready.get();
        if (p_.arvalid.get() && p_.arready.get()) {
            reads_.push_back(take_burst(p_.arid, p_.araddr, p_.arlen, p_.arsize, p_.arburst,
                                        cycle + params_.read_latency));
            counters_.read_bursts++;
        }
        if (r_fire) {
            Burst& b = reads_.front();
            if (beat_outside(b)) counters_.slverr_beats++;
            counters_.read_bytes += beat_bytes_;
            rcredit_ -= beat_bytes_;
            if (++b.beat > b.len) reads_.pop_front();
        }
        rcredit_ = std::min<uint64_t>(rcredit_ + params_.bytes_per_cycle, beat_bytes_);
        if (p_.bvalid.get() && p_.bready.get()) responses_.pop_front();
        if (w_fire) {
            Burst& b = writes_.front();
            uint64_t lo, hi;
            beat_lanes(b, lo, hi);
            if (beat_outside(b)) {
                b.error = true;
                counters_.slverr_beats++;
            } else {
                const uint8_t* data = p_.wdata.bytes();
                const uint8_t* strb = p_.wstrb.bytes();
                uint64_t base = beat_addr(b) - lo;
                for (uint64_t i = lo; i < hi; i++)
                    if (strb[i >> 3] >> (i & 7) & 1) mem_[base + i] = data[i];
            }
            const uint8_t* strobes = p_.wstrb.bytes();
            for (uint64_t i = 0; i < (beat_bytes_ + 7) / 8; i++) {
                uint8_t lanes = strobes[i];
                if (beat_bytes_ < 8) lanes &= static_cast<uint8_t>((1u << beat_bytes_) - 1);
                counters_.write_bytes += __builtin_popcount(lanes);
            }
            wcredit_ -= beat_bytes_;
            if (++b.beat > b.len) {
                responses_.push_back(Response{b.id, b.error, cycle + 1});
                writes_.pop_front();
            }
        }
        wcredit_ = std::min<uint64_t>(wcredit_ + params_.bytes_per_cycle, beat_bytes_);
        if (p_.awvalid.get() && p_.awready.get()) {
            writes_.push_back(take_burst(p_.awid, p_.awaddr, p_.awlen, p_.awsize, p_.awburst, cycle));
            counters_.write_bursts++;
        }
    }

    bool idle() const { return reads_.empty() && writes_.empty() && responses_.empty(); }

   private:
    struct Burst {
        uint64_t addr, len, size, kind, id, ready_cycle, beat;
        bool error;
    };
    struct Response {
        uint64_t id;
        bool error;
        uint64_t ready_cycle;
    };

    Burst take_burst(const Pin& id, const Pin& addr, const Pin& len, const Pin& size, const Pin& kind,
                     uint64_t ready_cycle) const {
        uint64_t s = size.get();
        if ((1ull << s) > beat_bytes_) s = __builtin_ctzll(beat_bytes_);  // wider than the bus: treat as full
        return Burst{addr.get(), len.get(), s, kind ? kind.get() : 1, id.get(), ready_cycle, 0, false};
    }
    // Byte address of the beat's first valid byte (INCR: aligned steps after an unaligned start).
    uint64_t beat_addr(const Burst& b) const {
        uint64_t step = 1ull << b.size;
        if (b.beat == 0 || b.kind == 0) return b.addr;
        return (b.addr & ~(step - 1)) + b.beat * step;
    }
    void beat_lanes(const Burst& b, uint64_t& lo, uint64_t& hi) const {
        uint64_t step = 1ull << b.size, a = beat_addr(b);
        lo = a % beat_bytes_;
        hi = ((a & ~(step - 1)) + step - 1) % beat_bytes_ + 1;
    }
    bool beat_outside(const Burst& b) const {
        uint64_t lo, hi;
        beat_lanes(b, lo, hi);
        uint64_t a = beat_addr(b);
        return a >= mem_.size() || hi - lo > mem_.size() - a;
    }

    bool paused() {  // one draw per channel per cycle (xorshift64*)
        if (!params_.pause_permille) return false;
        rng_ ^= rng_ >> 12;
        rng_ ^= rng_ << 25;
        rng_ ^= rng_ >> 27;
        return (rng_ * 0x2545F4914F6CDD1Dull >> 32) % 1000 < params_.pause_permille;
    }

    AxiPins p_;
    HbmParams params_;
    uint64_t rng_ = 0;
    bool r_raised_ = false, b_raised_ = false;
    uint64_t beat_bytes_;
    std::vector<uint8_t> mem_;
    std::deque<Burst> reads_, writes_;
    std::deque<Response> responses_;
    uint64_t rcredit_, wcredit_;
    HbmCounters counters_;
};

struct SimError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Sim {
   public:
    explicit Sim(HbmParams params, const char* trace_path = nullptr) : ctx_(new VerilatedContext) {
        ctx_->randReset(0);  // deterministic: uninitialised state starts at zero
        top_.reset(new Top(ctx_.get(), "TOP"));
        AxiPins axi[OLIVINE_CHANNELS > 0 ? OLIVINE_CHANNELS : 1];
        bind_ports(top_.get(), lite_, axi, clk_, rst_, interrupt_);
        bind_probes(top_.get(), probes_);
        for (int k = 0; k < OLIVINE_CHANNELS; k++) channels_.emplace_back(axi[k], params, k);
        lite_idle();
        clk_.set(0);
        top_->eval();
        if (trace_path) open_trace(trace_path);
    }
    ~Sim() {
#ifdef OLIVINE_TRACE
        if (trace_) trace_->close();
#endif
        if (timeline_) std::fclose(timeline_);
        top_->final();
    }

    void open_timeline(const char* path) {
        if (OLIVINE_PROBES == 0) throw SimError("this top has no probe ports (probe_<unit>_start/_end/_offset): no timeline");
        if (timeline_) std::fclose(timeline_);
        timeline_ = std::fopen(path, "w");
        if (!timeline_) throw SimError(std::string("cannot write the timeline file ") + path);
    }
    void mark_start() { origin_ = cycle_; }

    void open_trace(const char* path) {
#ifdef OLIVINE_TRACE
        ctx_->traceEverOn(true);
        trace_.reset(new TraceFile);
        top_->trace(trace_.get(), 99);
        trace_->open(path);
#else
        (void)path;
        throw SimError("this model was built without tracing: build the waves variant (fastsim waves=...)");
#endif
    }

    Top* top() { return top_.get(); }
    uint64_t cycle() const { return cycle_; }
    std::vector<HbmChannel>& channels() { return channels_; }
    HbmChannel& channel(int k) {
        if (k < 0 || k >= static_cast<int>(channels_.size()))
            throw SimError("HBM channel " + std::to_string(k) + " does not exist (the top has " +
                           std::to_string(channels_.size()) + " m_axi_hbm ports)");
        return channels_[k];
    }
    bool interrupt() const { return interrupt_.get() != 0; }
    bool has_interrupt() const { return static_cast<bool>(interrupt_); }

    // One clock cycle: model outputs, settle, handshakes, rising edge.
    void tick() {
        settle();
        edge();
    }
    // The first half of a cycle: the models' outputs, the combinational settle and the sampling of
    // this cycle's handshakes (what happens at the coming edge is visible now).
    void settle() {
        for (auto& ch : channels_) ch.drive(cycle_);
        clk_.set(0);
        top_->eval();
        for (auto& ch : channels_) ch.sample(cycle_);
        lite_sample();
        if (timeline_) record_probes();
#ifdef OLIVINE_TRACE
        if (trace_) trace_->dump(2 * cycle_);
#endif
    }
    // The second half: the rising edge.
    void edge() {
        clk_.set(1);
        top_->eval();
#ifdef OLIVINE_TRACE
        if (trace_) trace_->dump(2 * cycle_ + 1);
#endif
        cycle_++;
    }
    void step(uint64_t n) {
        for (uint64_t i = 0; i < n; i++) tick();
    }
    void reset(uint64_t n) {
        rst_.set(1);
        step(n);
        rst_.set(0);
        top_->eval();
        step(OLIVINE_RESET_LATENCY);
    }

    // AXI4-Lite master: blocking, `limit` cycles at most per access.
    void lite_write(uint32_t addr, uint32_t data, uint64_t limit = 10000) {
        lite_.awaddr.set(addr);
        lite_.wdata.set(data);
        lite_.wstrb.set(0xF);
        lite_.awvalid.set(1);
        lite_.wvalid.set(1);
        lite_.bready.set(1);
        aw_done_ = w_done_ = b_done_ = false;
        uint64_t start = cycle_;
        while (!b_done_) {
            if (cycle_ - start > limit)
                throw SimError("AXI4-Lite write to 0x" + hex(addr) + " not answered in " + std::to_string(limit) + " cycles");
            tick();
            if (aw_done_) lite_.awvalid.set(0);
            if (w_done_) lite_.wvalid.set(0);
        }
        lite_idle();
        if (b_resp_ != RESP_OKAY) throw SimError("AXI4-Lite write to 0x" + hex(addr) + " answered BRESP " + std::to_string(b_resp_));
    }
    uint32_t lite_read(uint32_t addr, uint64_t limit = 10000) {
        lite_.araddr.set(addr);
        lite_.arvalid.set(1);
        lite_.rready.set(1);
        ar_done_ = r_done_ = false;
        uint64_t start = cycle_;
        while (!r_done_) {
            if (cycle_ - start > limit)
                throw SimError("AXI4-Lite read of 0x" + hex(addr) + " not answered in " + std::to_string(limit) + " cycles");
            tick();
            if (ar_done_) lite_.arvalid.set(0);
        }
        lite_idle();
        if (r_resp_ != RESP_OKAY) throw SimError("AXI4-Lite read of 0x" + hex(addr) + " answered RRESP " + std::to_string(r_resp_));
        return r_data_;
    }

    // Run until done (interrupt pin, or CTRL's ap_done polled every `poll` cycles) or `budget` cycles
    // after `start_cycle`. Returns true when done.
    bool wait_done(uint64_t start_cycle, uint64_t budget, bool use_interrupt, uint64_t poll) {
        if (use_interrupt && !has_interrupt()) throw SimError("the top has no interrupt port: wait in poll mode");
        if (poll < 1) poll = 1;
        while (cycle_ - start_cycle < budget) {
            if (use_interrupt) {
                tick();
                if (interrupt()) return true;
            } else {
                uint64_t stop = std::min(cycle_ + poll, start_cycle + budget);
                while (cycle_ < stop) tick();
                if (lite_read(0x00) & 0x2) return true;
            }
        }
        return false;
    }

    static std::string hex(uint64_t v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%" PRIx64, v);
        return buf;
    }

   private:
    void record_probes() {  // sampled before the edge, like the handshakes: they happen at this edge
        for (int u = 0; u < OLIVINE_PROBES; u++) {
            const ProbePins& p = probes_[u];
            if (p.start.get())
                std::fprintf(timeline_, "S %s %" PRId64 " %" PRIu64 "\n", PROBE_UNITS[u], static_cast<int64_t>(cycle_ - origin_), p.offset.get());
            if (p.end.get()) std::fprintf(timeline_, "E %s %" PRId64 "\n", PROBE_UNITS[u], static_cast<int64_t>(cycle_ - origin_));
        }
    }
    void lite_idle() {
        lite_.awvalid.set(0);
        lite_.wvalid.set(0);
        lite_.bready.set(0);
        lite_.arvalid.set(0);
        lite_.rready.set(0);
    }
    void lite_sample() {
        if (lite_.awvalid.get() && lite_.awready.get()) aw_done_ = true;
        if (lite_.wvalid.get() && lite_.wready.get()) w_done_ = true;
        if (lite_.bvalid.get() && lite_.bready.get()) { b_done_ = true; b_resp_ = lite_.bresp.get(); }
        if (lite_.arvalid.get() && lite_.arready.get()) ar_done_ = true;
        if (lite_.rvalid.get() && lite_.rready.get()) {
            r_done_ = true;
            r_data_ = static_cast<uint32_t>(lite_.rdata.get());
            r_resp_ = lite_.rresp.get();
        }
    }

    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Top> top_;
#ifdef OLIVINE_TRACE
    std::unique_ptr<TraceFile> trace_;
#endif
    LitePins lite_;
    ProbePins probes_[OLIVINE_PROBES > 0 ? OLIVINE_PROBES : 1];
    std::FILE* timeline_ = nullptr;
    uint64_t origin_ = 0;
    Pin clk_, rst_, interrupt_;
    std::vector<HbmChannel> channels_;
    uint64_t cycle_ = 0;
    bool aw_done_ = false, w_done_ = false, b_done_ = false, ar_done_ = false, r_done_ = false;
    uint64_t b_resp_ = 0, r_resp_ = 0;
    uint32_t r_data_ = 0;
};

static void load_file(HbmChannel& ch, uint64_t addr, const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw SimError("cannot read " + path);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto& mem = ch.memory();
    if (addr > mem.size() || bytes.size() > mem.size() - addr)
        throw SimError(path + " (" + std::to_string(bytes.size()) + " bytes at 0x" + Sim::hex(addr) +
                       ") does not fit the channel's " + std::to_string(mem.size()) + " bytes: raise channel_bytes");
    std::copy(bytes.begin(), bytes.end(), mem.begin() + addr);
}

static void dump_file(HbmChannel& ch, uint64_t addr, uint64_t len, const std::string& path) {
    auto& mem = ch.memory();
    if (addr > mem.size() || len > mem.size() - addr)
        throw SimError("dump of " + std::to_string(len) + " bytes at 0x" + Sim::hex(addr) + " lies outside the channel");
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        out.write(reinterpret_cast<const char*>(mem.data() + addr), static_cast<std::streamsize>(len));
        if (!out) throw SimError("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw SimError("cannot rename " + tmp + " to " + path);
}

#ifndef OLIVINE_SHARED
// ---------------------------------------------------------------------------------------------
// batch executable

static std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (static_cast<unsigned char>(c) < 0x20) { out += ' '; continue; }
        out += c;
    }
    return out;
}

static uint64_t number(const std::string& text) {
    size_t used = 0;
    uint64_t v = std::stoull(text, &used, 0);
    if (used != text.size()) throw SimError("not a number: " + text);
    return v;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s SCRIPT\n", argv[0]);
        return 2;
    }
    std::ifstream script(argv[1]);
    if (!script) {
        std::fprintf(stderr, "cannot read script %s\n", argv[1]);
        return 2;
    }
    HbmParams params;
    std::unique_ptr<Sim> sim;
    std::vector<std::pair<std::string, uint32_t>> regs;
    std::string result_path, status = "ok", error;
    uint64_t start_cycle = 0, run_cycles = 0, budget = 0;
    double run_seconds = 0;
    bool waited = false;
    std::string line;
    int line_no = 0;
    std::vector<std::vector<std::string>> commands;
    while (std::getline(script, line)) {
        std::istringstream words(line);
        std::vector<std::string> cmd;
        for (std::string w; words >> w;) cmd.push_back(w);
        if (!cmd.empty() && cmd[0][0] != '#') commands.push_back(cmd);
    }
    auto ensure_sim = [&]() {
        if (!sim) sim.reset(new Sim(params));
    };
    try {
        for (auto& cmd : commands) {
            line_no++;
            const std::string& op = cmd[0];
            auto need = [&](size_t n) {
                if (cmd.size() != n + 1) throw SimError("script command '" + op + "' takes " + std::to_string(n) + " arguments");
            };
            if (op == "channel_bytes" || op == "read_latency" || op == "bytes_per_cycle" || op == "outstanding" ||
                op == "pause_permille" || op == "seed") {
                need(1);
                if (sim) throw SimError("HBM parameters must come before the first load/reset/write");
                uint64_t v = number(cmd[1]);
                (op == "channel_bytes" ? params.channel_bytes : op == "read_latency" ? params.read_latency
                 : op == "bytes_per_cycle" ? params.bytes_per_cycle : op == "outstanding" ? params.outstanding
                 : op == "pause_permille" ? params.pause_permille : params.seed) = v;
            } else if (op == "result") {
                need(1);
                result_path = cmd[1];
            } else if (op == "waves") {
                need(1);
                ensure_sim();
                sim->open_trace(cmd[1].c_str());
            } else if (op == "timeline") {
                need(1);
                ensure_sim();
                sim->open_timeline(cmd[1].c_str());
            } else if (op == "load") {
                need(3);
                ensure_sim();
                load_file(sim->channel(static_cast<int>(number(cmd[1]))), number(cmd[2]), cmd[3]);
            } else if (op == "reset") {
                need(1);
                ensure_sim();
                sim->reset(number(cmd[1]));
            } else if (op == "write") {
                need(2);
                ensure_sim();
                sim->lite_write(static_cast<uint32_t>(number(cmd[1])), static_cast<uint32_t>(number(cmd[2])));
            } else if (op == "read") {
                need(2);
                ensure_sim();
                regs.emplace_back(cmd[1], sim->lite_read(static_cast<uint32_t>(number(cmd[2]))));
            } else if (op == "start") {
                need(0);
                ensure_sim();
                sim->lite_write(0x00, 1);
                start_cycle = sim->cycle();
                sim->mark_start();
            } else if (op == "wait") {
                need(3);
                ensure_sim();
                budget = number(cmd[1]);
                auto t0 = std::chrono::steady_clock::now();
                bool done = sim->wait_done(start_cycle, budget, cmd[2] == "interrupt", number(cmd[3]));
                run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                run_cycles = sim->cycle() - start_cycle;
                waited = true;
                if (!done) status = "budget_exceeded";
            } else if (op == "dump") {
                need(4);
                ensure_sim();
                dump_file(sim->channel(static_cast<int>(number(cmd[1]))), number(cmd[2]), number(cmd[3]), cmd[4]);
            } else {
                throw SimError("unknown script command '" + op + "'");
            }
        }
    } catch (const std::exception& exc) {
        status = "error";
        error = "script command " + std::to_string(line_no) + ": " + exc.what();
    }
    std::ostringstream out;
    out << "{\n \"status\": \"" << status << "\",\n \"error\": \"" << json_escape(error) << "\",\n";
    out << " \"cycles_total\": " << (sim ? sim->cycle() : 0) << ",\n \"run_cycles\": " << run_cycles
        << ",\n \"budget\": " << budget << ",\n \"waited\": " << (waited ? "true" : "false")
        << ",\n \"run_seconds\": " << run_seconds << ",\n \"registers\": {";
    for (size_t i = 0; i < regs.size(); i++)
        out << (i ? ", " : "") << "\"" << json_escape(regs[i].first) << "\": " << regs[i].second;
    out << "},\n \"hbm\": [";
    if (sim) {
        for (size_t k = 0; k < sim->channels().size(); k++) {
            const HbmCounters& c = sim->channels()[k].counters();
            out << (k ? ", " : "") << "{\"read_bytes\": " << c.read_bytes << ", \"write_bytes\": " << c.write_bytes
                << ", \"read_bursts\": " << c.read_bursts << ", \"write_bursts\": " << c.write_bursts
                << ", \"slverr_beats\": " << c.slverr_beats << "}";
        }
    }
    out << "]\n}\n";
    if (!result_path.empty()) {
        std::string tmp = result_path + ".tmp";
        std::ofstream(tmp) << out.str();
        std::rename(tmp.c_str(), result_path.c_str());
    } else {
        std::fputs(out.str().c_str(), stdout);
    }
    return status == "error" ? 1 : 0;
}

#else
// ---------------------------------------------------------------------------------------------
// shared library: the C API of the interactive handle (sim/fastsim.py DebugHandle)

struct Handle {
    std::unique_ptr<Sim> sim;
    std::string error;
};

static thread_local std::string last_error;

template <class F>
static int guarded(Handle* h, F&& f) {
    try {
        f();
        return 0;
    } catch (const std::exception& exc) {
        last_error = exc.what();
        if (h) h->error = exc.what();
        return -1;
    }
}

static vpiHandle signal_handle(const char* name) {
    vpiHandle sig = vpi_handle_by_name(const_cast<PLI_BYTE8*>(name), nullptr);
    if (!sig) throw SimError(std::string("no public signal named '") + name + "' (list them with signals())");
    return sig;
}

extern "C" {

const char* olv_last_error() { return last_error.c_str(); }

void* olv_create(uint64_t channel_bytes, uint64_t read_latency, uint64_t bytes_per_cycle, uint64_t outstanding,
                 const char* trace_path) {
    Handle* h = new Handle;
    HbmParams params{channel_bytes, read_latency, bytes_per_cycle, outstanding};
    if (guarded(h, [&] { h->sim.reset(new Sim(params, trace_path && *trace_path ? trace_path : nullptr)); }) != 0) {
        delete h;
        return nullptr;
    }
    return h;
}

void olv_destroy(void* handle) { delete static_cast<Handle*>(handle); }

int olv_channels(void*) { return OLIVINE_CHANNELS; }

uint64_t olv_cycle(void* handle) { return static_cast<Handle*>(handle)->sim->cycle(); }

int olv_step(void* handle, uint64_t n) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] { h->sim->step(n); });
}

int olv_reset(void* handle, uint64_t n) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] { h->sim->reset(n); });
}

int olv_lite_write(void* handle, uint32_t addr, uint32_t data) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] { h->sim->lite_write(addr, data); });
}

int olv_lite_read(void* handle, uint32_t addr, uint32_t* data) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] { *data = h->sim->lite_read(addr); });
}

// Returns 1 when done, 0 when the budget ran out, -1 on error.
int olv_wait_done(void* handle, uint64_t start_cycle, uint64_t budget, int use_interrupt, uint64_t poll) {
    Handle* h = static_cast<Handle*>(handle);
    bool done = false;
    if (guarded(h, [&] { done = h->sim->wait_done(start_cycle, budget, use_interrupt != 0, poll); }) != 0) return -1;
    return done ? 1 : 0;
}

int olv_hbm_access(void* handle, int channel, uint64_t addr, uint8_t* buf, uint64_t len, int write) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        auto& mem = h->sim->channel(channel).memory();
        if (addr > mem.size() || len > mem.size() - addr)
            throw SimError(std::to_string(len) + " bytes at 0x" + Sim::hex(addr) + " lie outside channel " +
                           std::to_string(channel) + " (" + std::to_string(mem.size()) + " bytes)");
        if (write) std::memcpy(mem.data() + addr, buf, len);
        else std::memcpy(buf, mem.data() + addr, len);
    });
}

int olv_hbm_counters(void* handle, int channel, uint64_t* out5) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        const HbmCounters& c = h->sim->channel(channel).counters();
        uint64_t v[5] = {c.read_bytes, c.write_bytes, c.read_bursts, c.write_bursts, c.slverr_beats};
        std::memcpy(out5, v, sizeof v);
    });
}

// Signal width in bits (0 when unknown), for sizing peek buffers.
int olv_signal_bits(void* handle, const char* name) {
    Handle* h = static_cast<Handle*>(handle);
    int bits = 0;
    if (guarded(h, [&] { bits = vpi_get(vpiSize, signal_handle(name)); }) != 0) return -1;
    return bits;
}

// Value of a signal (or `mem[index]`) as little-endian 32-bit words.
int olv_peek(void* handle, const char* name, uint32_t* words, int nwords) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        vpiHandle sig = signal_handle(name);
        int bits = vpi_get(vpiSize, sig);
        if ((bits + 31) / 32 > nwords) throw SimError(std::string("peek buffer too small for ") + name);
        s_vpi_value value;
        value.format = vpiVectorVal;
        vpi_get_value(sig, &value);
        for (int i = 0; i < (bits + 31) / 32; i++) words[i] = value.value.vector[i].aval;
    });
}

int olv_poke(void* handle, const char* name, const uint32_t* words, int nwords) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        vpiHandle sig = signal_handle(name);
        int bits = vpi_get(vpiSize, sig);
        int n = (bits + 31) / 32;
        std::vector<s_vpi_vecval> vec(n);
        for (int i = 0; i < n; i++) vec[i] = s_vpi_vecval{static_cast<PLI_INT32>(i < nwords ? words[i] : 0), 0};
        s_vpi_value value;
        value.format = vpiVectorVal;
        value.value.vector = vec.data();
        vpi_put_value(sig, &value, nullptr, vpiNoDelay);
        h->sim->top()->eval();  // combinational logic sees the new value now
    });
}

// Verilator 5 reports unpacked arrays as vpiRegArray (older versions: vpiMemory).
static bool is_memory(vpiHandle sig) {
    int type = vpi_get(vpiType, sig);
    return type == vpiRegArray || type == vpiMemory;
}

static vpiHandle memory_handle(const char* name) {
    vpiHandle mem = signal_handle(name);
    if (!is_memory(mem)) throw SimError(std::string("'") + name + "' is not a memory");
    return mem;
}

// Word `index` of memory `mem` (named `name` for the error) and its width in 32-bit words.
static vpiHandle memory_word(vpiHandle mem, const char* name, int index, int& words32) {
    vpiHandle word = vpi_handle_by_index(mem, index);
    if (!word) throw SimError(std::string("memory '") + name + "' has no word " + std::to_string(index));
    words32 = (vpi_get(vpiSize, word) + 31) / 32;
    return word;
}

int olv_memory_depth(void* handle, const char* name) {
    Handle* h = static_cast<Handle*>(handle);
    int depth = 0;
    if (guarded(h, [&] { depth = vpi_get(vpiSize, memory_handle(name)); }) != 0) return -1;
    return depth;
}

int olv_memory_bits(void* handle, const char* name) {
    Handle* h = static_cast<Handle*>(handle);
    int bits = 0;
    if (guarded(h, [&] {
            vpiHandle word = vpi_handle_by_index(memory_handle(name), 0);
            if (!word) throw SimError(std::string("memory '") + name + "' has no word 0");
            bits = vpi_get(vpiSize, word);
        }) != 0)
        return -1;
    return bits;
}

// Words start .. start+count-1 of a memory, each as `nwords` little-endian 32-bit words.
int olv_peek_memory(void* handle, const char* name, int start, int count, uint32_t* out, int nwords) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        vpiHandle mem = memory_handle(name);
        for (int i = 0; i < count; i++) {
            int n;
            vpiHandle word = memory_word(mem, name, start + i, n);
            if (n > nwords) throw SimError(std::string("memory word buffer too small for ") + name);
            s_vpi_value value;
            value.format = vpiVectorVal;
            vpi_get_value(word, &value);
            for (int j = 0; j < nwords; j++) out[i * nwords + j] = j < n ? value.value.vector[j].aval : 0;
        }
    });
}

// Step until every named signal equals its value (up to 64 bits each), at most `limit` cycles;
// checked before the first step too. Returns the cycles stepped, -1 on error, -2 when the limit
// ran out.
int64_t olv_run_until(void* handle, const char** names, const uint64_t* values, int count, uint64_t limit) {
    Handle* h = static_cast<Handle*>(handle);
    int64_t result = -2;
    if (guarded(h, [&] {
            std::vector<vpiHandle> sigs;
            for (int i = 0; i < count; i++) sigs.push_back(signal_handle(names[i]));
            auto matches = [&] {
                for (int i = 0; i < count; i++) {
                    s_vpi_value value;
                    value.format = vpiVectorVal;
                    vpi_get_value(sigs[i], &value);
                    uint64_t v = static_cast<uint32_t>(value.value.vector[0].aval);
                    if (vpi_get(vpiSize, sigs[i]) > 32) v |= static_cast<uint64_t>(static_cast<uint32_t>(value.value.vector[1].aval)) << 32;
                    if (v != values[i]) return false;
                }
                return true;
            };
            if (matches()) { result = 0; return; }
            for (uint64_t n = 0; n < limit; n++) {
                h->sim->tick();
                if (matches()) { result = static_cast<int64_t>(n + 1); return; }
            }
        }) != 0)
        return -1;
    return result;
}

// Run until `valid` and `ready` are both high where the harness samples handshakes (after the
// models' outputs settle, before the clock edge: the handshake happens at that edge), then through
// that edge; at most `limit` cycles. `payload` (a signal name, or null/empty) is read at the
// handshake into `words` (little-endian 32-bit words, `nwords` of them); `at` receives the model's
// cycle of the edge (olv_cycle before it). Returns the cycles stepped (>= 1), -1 on error, -2 when
// the limit ran out.
int64_t olv_run_to_handshake(void* handle, const char* valid, const char* ready, const char* payload,
                             uint32_t* words, int nwords, uint64_t limit, uint64_t* at) {
    Handle* h = static_cast<Handle*>(handle);
    int64_t result = -2;
    if (guarded(h, [&] {
            vpiHandle v = signal_handle(valid), r = signal_handle(ready);
            vpiHandle p = payload && *payload ? signal_handle(payload) : nullptr;
            int pbits = p ? vpi_get(vpiSize, p) : 0;
            if (p && (pbits + 31) / 32 > nwords) throw SimError(std::string("payload buffer too small for ") + payload);
            auto high = [](vpiHandle sig) {
                s_vpi_value value;
                value.format = vpiIntVal;
                vpi_get_value(sig, &value);
                return (value.value.integer & 1) != 0;
            };
            Sim& sim = *h->sim;
            for (uint64_t n = 0; n < limit; n++) {
                sim.settle();
                if (high(v) && high(r)) {
                    if (p) {
                        s_vpi_value value;
                        value.format = vpiVectorVal;
                        vpi_get_value(p, &value);
                        for (int i = 0; i < nwords; i++) words[i] = i < (pbits + 31) / 32 ? value.value.vector[i].aval : 0;
                    }
                    if (at) *at = sim.cycle();
                    sim.edge();
                    result = static_cast<int64_t>(n + 1);
                    return;
                }
                sim.edge();
            }
        }) != 0)
        return -1;
    return result;
}

// Write words start .. start+count-1 of a memory (each `nwords` little-endian 32-bit words).
int olv_poke_memory(void* handle, const char* name, int start, int count, const uint32_t* in, int nwords) {
    Handle* h = static_cast<Handle*>(handle);
    return guarded(h, [&] {
        vpiHandle mem = memory_handle(name);
        for (int i = 0; i < count; i++) {
            int n;
            vpiHandle word = memory_word(mem, name, start + i, n);
            std::vector<s_vpi_vecval> vec(n);
            for (int j = 0; j < n; j++)
                vec[j] = s_vpi_vecval{static_cast<PLI_INT32>(j < nwords ? in[i * nwords + j] : 0), 0};
            s_vpi_value value;
            value.format = vpiVectorVal;
            value.value.vector = vec.data();
            vpi_put_value(word, &value, nullptr, vpiNoDelay);
        }
        h->sim->top()->eval();
    });
}

// Newline-separated "name bits" of every public signal (scope-qualified), into buf; returns the
// length needed (call again with a larger buffer when it exceeds len).
int64_t olv_signals(void*, char* buf, int64_t len) {
    std::string text;
    std::vector<vpiHandle> modules;
    vpiHandle it = vpi_iterate(vpiModule, nullptr);
    while (vpiHandle mod = it ? vpi_scan(it) : nullptr) modules.push_back(mod);
    for (size_t i = 0; i < modules.size(); i++) {
        for (int kind : {vpiReg, vpiNet}) {  // Verilator lists memories with the regs
            vpiHandle sit = vpi_iterate(kind, modules[i]);
            while (vpiHandle sig = sit ? vpi_scan(sit) : nullptr) {
                text += vpi_get_str(vpiFullName, sig);
                text += ' ';
                bool memory = is_memory(sig);
                text += std::to_string(memory ? -vpi_get(vpiSize, sig) : vpi_get(vpiSize, sig));
                text += '\n';
            }
        }
        vpiHandle sub = vpi_iterate(vpiModule, modules[i]);
        while (vpiHandle mod = sub ? vpi_scan(sub) : nullptr) modules.push_back(mod);
    }
    if (static_cast<int64_t>(text.size()) < len) std::memcpy(buf, text.c_str(), text.size() + 1);
    return static_cast<int64_t>(text.size()) + 1;
}

}  // extern "C"
#endif
