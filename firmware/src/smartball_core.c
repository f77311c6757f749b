/*
 * SmartBall OTA protocol v1, device side (docs/protocol.md). See smartball_core.h.
 *
 * Shape: frames are decoded as bytes arrive; each is handled at once unless a page erase
 * is under way (on the nRF52840 that stalls the CPU; on a SoftDevice or Zephyr it does not,
 * so the core holds such frames on purpose in `inbox` and handles them when the page is
 * done, after its PROGRESS: protocol section 7.7). The flash does one operation at a time;
 * which one comes next follows from the state (the up-front erase's next page, else the
 * oldest buffered chunk, preceded in a progressive session by its page's erase). What must
 * wait until the bytes accepted so far are written (an ACK, the resume READY, the verify)
 * waits in `actions`, in order.
 */
#include "smartball_core.h"

#include <string.h>

enum { T_INFO = 0x01, T_START = 0x10, T_DATA = 0x11, T_STATUS = 0x12, T_ABORT = 0x13,
       T_FINISH = 0x14, T_MANIFEST = 0x15, T_CONFIRM = 0x16, M_INFO = 0x81, M_READY = 0x90, M_PROGRESS = 0x91, M_STATUS = 0x92,
       M_ACK = 0x93, M_DONE = 0x94, M_ERROR = 0xEE };
enum { OP_NONE = 0, OP_ERASE = 1, OP_WRITE = 2 };
enum { A_ACK = 1, A_READY = 2, A_VERIFY = 3 };
enum { MF_NONE = 0, MF_ACCEPTED = 1, MF_SESSION = 2 };
#define CAP_SIGNED_IMAGES 2u
#define SOF 0xA5u
#define IDLE_US 1000000u
#define TX_WAIT_US 1000000u
#define N_SLOTS (SB_MAX_WINDOW + 1u)
#define N_ACTIONS (sizeof(((sb_core_t *)0)->actions) / sizeof(sb_action_t))

/* The sizes the instance's counters can hold. */
typedef char sb_inbox_fits_u16[(SB_INBOX_BYTES <= 65535u) ? 1 : -1];
typedef char sb_window_fits_u8[(SB_MAX_WINDOW >= 1u && SB_MAX_WINDOW <= 254u) ? 1 : -1];
typedef char sb_chunk_whole_words[(SB_MAX_CHUNK % 4u == 0u && SB_MAX_CHUNK >= 4u &&
                                   SB_MAX_CHUNK <= 500u) ? 1 : -1];
typedef char sb_verify_step_ok[(SB_VERIFY_STEP >= 1u) ? 1 : -1];
typedef char sb_keys_fit_u8[(SB_MAX_KEYS >= 1u && SB_MAX_KEYS <= 255u) ? 1 : -1];

/* ---- little-endian helpers, checksums, frames ---------------------------------------- */

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

uint16_t sb_crc16(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFFu;
    while (len--) {
        unsigned bit;
        crc ^= (uint16_t)((uint16_t)*data++ << 8);
        for (bit = 0; bit < 8; bit++)
            crc = (uint16_t)((crc & 0x8000u) ? ((unsigned)crc << 1) ^ 0x1021u : (unsigned)crc << 1);
    }
    return crc;
}

uint32_t sb_crc32_update(uint32_t crc, const uint8_t *data, size_t len)
{
    /* A nibble table: 64 bytes of flash, about 4x the speed of the bitwise loop. */
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
        0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
        0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    crc = ~crc;
    while (len--) {
        crc ^= *data++;
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return ~crc;
}

uint16_t sb_frame(uint8_t *out, uint8_t type, const uint8_t *payload, uint16_t payload_len)
{
    uint16_t crc;
    if (payload_len > SB_MAX_PAYLOAD)
        return 0;
    out[0] = SOF;
    out[1] = type;
    out[2] = (uint8_t)payload_len;
    out[3] = (uint8_t)(payload_len >> 8);
    if (payload_len)
        memcpy(out + 4, payload, payload_len);
    crc = sb_crc16(out + 1, (size_t)payload_len + 3u);
    out[4 + payload_len] = (uint8_t)crc;
    out[5 + payload_len] = (uint8_t)(crc >> 8);
    return (uint16_t)(payload_len + 6u);
}

/* ---- the decoder (protocol section 4) ------------------------------------------------ */

void sb_decoder_reset(sb_decoder_t *dec)
{
    dec->dropped_bytes += dec->len;
    dec->len = 0;
}

static void drop_front(sb_decoder_t *dec, uint16_t n)
{
    dec->dropped_bytes += n;
    dec->len = (uint16_t)(dec->len - n);
    memmove(dec->buf, dec->buf + n, dec->len);
}

void sb_decoder_feed(sb_decoder_t *dec, const uint8_t *data, size_t len, int has_time,
                     uint64_t now_us,
                     void (*on_frame)(void *arg, uint8_t type, const uint8_t *p, uint16_t n),
                     void *arg)
{
    if (has_time && len) {
        if (dec->len && dec->has_last && now_us - dec->last_us >= IDLE_US)
            sb_decoder_reset(dec); /* rule 7: a stale partial frame goes first */
        dec->has_last = 1;
        dec->last_us = now_us;
    }
    /* Taking the bytes one at a time decides exactly as taking them at once: every
     * decision depends only on the buffer's first bytes. */
    while (len--) {
        uint8_t byte = *data++;
        if (dec->len == 0 && byte != SOF) {
            dec->dropped_bytes++;
            continue;
        }
        dec->buf[dec->len++] = byte;
        while (dec->len) {
            uint16_t length, i;
            if (dec->buf[0] != SOF) {
                for (i = 1; i < dec->len && dec->buf[i] != SOF; i++)
                    ;
                drop_front(dec, i);
                continue;
            }
            if (dec->len < 4)
                break;
            length = (uint16_t)(dec->buf[2] | (dec->buf[3] << 8));
            if (length > SB_MAX_PAYLOAD) {
                dec->bad_length++;
                drop_front(dec, 1);
                continue;
            }
            if (dec->len < length + 6u)
                break;
            if (sb_crc16(dec->buf + 1, (size_t)length + 3u) !=
                (uint16_t)(dec->buf[4 + length] | (dec->buf[5 + length] << 8))) {
                dec->bad_crc++;
                drop_front(dec, 1);
                continue;
            }
            dec->frames++;
            on_frame(arg, dec->buf[1], dec->buf + 4, length); /* it may not feed dec */
            drop_front(dec, (uint16_t)(length + 6u));
            dec->dropped_bytes -= length + 6u; /* taken, not dropped */
        }
    }
}

/* ---- commands ------------------------------------------------------------------------ */

int sb_parse_command(uint8_t type, const uint8_t *payload, uint16_t len, uint32_t fields[4])
{
    uint16_t need;
    switch (type) {
    case T_START: need = 10; break;
    case T_DATA: need = 4; break;
    case T_MANIFEST: need = SB_HEAD_SIZE; break;
    case T_INFO: case T_STATUS: case T_ABORT: case T_FINISH: case T_CONFIRM: need = 0; break;
    default: return SB_E_UNKNOWN_COMMAND;
    }
    if (len < need)
        return SB_E_BAD_FRAME;
    fields[0] = fields[1] = fields[2] = fields[3] = 0;
    if (type == T_START) {
        fields[0] = get32(payload);
        fields[1] = get32(payload + 4);
        fields[2] = (uint32_t)payload[8] | ((uint32_t)payload[9] << 8);
        fields[3] = len >= 14 ? get32(payload + 10) : 0u; /* optional flags */
    } else if (type == T_DATA) {
        fields[0] = get32(payload);
        fields[1] = (uint32_t)len - 4u;
    } else if (type == T_MANIFEST) {
        fields[0] = get32(payload + 8);
        fields[1] = get32(payload + 12);
        fields[2] = get32(payload + 16);
        fields[3] = get32(payload + 20);
    }
    return 0;
}

/* ---- sending ------------------------------------------------------------------------- */

uint16_t sb_encode(uint8_t *out, uint8_t type, const uint32_t *f, const uint8_t *text,
                   uint16_t text_len)
{
    uint8_t p[2 + SB_MAX_ERROR_TEXT];
    uint16_t n;
    switch (type) {
    case M_INFO:
        p[0] = (uint8_t)f[0];
        p[1] = (uint8_t)f[1];
        p[2] = (uint8_t)f[2];
        p[3] = (uint8_t)f[3];
        put32(put32(put32(put32(p + 4, f[4]), f[5]), f[6]), f[7]);
        n = f[7] ? 20 : 16; /* capabilities is optional: left out while it is 0 (section 6) */
        if (f[7] & CAP_SIGNED_IMAGES) { /* the trust fields (section 16.7) */
            put32(p + 20, f[8]);
            p[24] = (uint8_t)f[9];
            put32(p + 25, f[10]);
            n = 29;
        }
        break;
    case M_READY:
        p[0] = (uint8_t)f[0];
        p[1] = (uint8_t)(f[0] >> 8);
        p[2] = (uint8_t)f[1];
        p[3] = (uint8_t)(f[1] >> 8);
        n = 4;
        break;
    case M_PROGRESS:
        p[0] = (uint8_t)f[0];
        put32(put32(p + 1, f[1]), f[2]);
        n = 9;
        break;
    case M_STATUS:
        p[0] = (uint8_t)f[0];
        put32(put32(put32(p + 1, f[1]), f[2]), f[3]);
        n = 13;
        break;
    case M_ACK:
    case M_DONE:
        put32(p, f[0]);
        n = 4;
        break;
    case M_ERROR:
        p[0] = (uint8_t)f[0];
        p[1] = (uint8_t)f[1];
        n = text_len < SB_MAX_ERROR_TEXT ? text_len : (uint16_t)SB_MAX_ERROR_TEXT;
        if (n)
            memcpy(p + 2, text, n);
        n = (uint16_t)(n + 2u);
        break;
    default:
        return 0;
    }
    return sb_frame(out, type, p, n);
}

static void send4(sb_core_t *c, uint8_t type, uint32_t a, uint32_t b, uint32_t d, uint32_t e)
{
    uint8_t frame[6 + 2 + SB_MAX_ERROR_TEXT];
    uint32_t f[4];
    f[0] = a;
    f[1] = b;
    f[2] = d;
    f[3] = e;
    c->hal->notify(c->hal->ctx, frame, sb_encode(frame, type, f, NULL, 0));
}

/* MSG_ERROR without a text: texts are informative, none keeps the code small. */
static void send_error(sb_core_t *c, uint8_t code, uint8_t command)
{
    send4(c, M_ERROR, code, command, 0, 0);
}

static void refuse(sb_core_t *c, uint8_t code)
{
    send_error(c, code, c->answering);
}

static uint8_t in_session(const sb_core_t *c)
{
    return c->state != SB_IDLE && c->state != SB_ERROR;
}

static void send_status(sb_core_t *c)
{
    uint32_t f[4];
    sb_status(c, f);
    send4(c, M_STATUS, f[0], f[1], f[2], f[3]);
}

static void send_ready(sb_core_t *c)
{
    send4(c, M_READY, c->max_chunk, c->window, 0, 0);
}

/* A device with the HAL's crypto hooks is signed-only (section 16); sb_init saw all or none. */
static uint8_t is_signed(const sb_core_t *c)
{
    return c->hal->ed25519_verify != NULL;
}

static void send_info(sb_core_t *c)
{
    uint8_t frame[6 + 29];
    uint32_t f[11];
    f[0] = 1; /* protocol version */
    f[1] = c->cfg.fw_version[0];
    f[2] = c->cfg.fw_version[1];
    f[3] = c->cfg.fw_version[2];
    f[4] = c->cfg.active_image_size;
    f[5] = c->cfg.active_image_crc32;
    f[6] = c->cfg.staging_capacity;
    f[7] = (c->cfg.progressive_erase ? 1u : 0u) | (is_signed(c) ? CAP_SIGNED_IMAGES : 0u);
    f[8] = c->cfg.security_counter;
    f[9] = c->cfg.image_state;
    f[10] = c->cfg.trusted_key_id[0];
    c->hal->notify(c->hal->ctx, frame, sb_encode(frame, M_INFO, f, NULL, 0));
}

/* ---- the session --------------------------------------------------------------------- */

static void pump(sb_core_t *c);
static void event(sb_core_t *c, uint8_t kind, uint8_t type, uint32_t a, uint32_t b);

static void end_session(sb_core_t *c, uint8_t state)
{
    c->state = state;
    c->generation++;
    c->image_size = c->image_crc32 = c->next_offset = c->written_offset = 0;
    /* Queued work goes; a write under way keeps its slot until it is over. */
    c->chunk_head = (uint8_t)(c->op_kind == OP_WRITE ? (c->op_slot + 1u) % N_SLOTS
                                                      : c->chunk_head);
    c->chunk_count = 0;
    c->action_count = 0;
    c->verifying = 0;
    if (c->manifest == MF_SESSION)
        c->manifest = MF_NONE;
    if (c->op_kind == OP_NONE)
        c->op_retried = 0; /* a failed operation waiting for its retry is dropped */
}

static void run_action(sb_core_t *c, const sb_action_t *a)
{
    if (a->kind == A_ACK) {
        send4(c, M_ACK, a->offset, 0, 0, 0);
    } else if (a->kind == A_READY) {
        if (c->state == SB_RECEIVING)
            send_ready(c);
    } else {
        c->verifying = 1; /* sb_poll reads the staged image back, step by step */
        c->verify_pos = 0;
        c->verify_crc = 0;
        if (c->manifest == MF_SESSION) {
            c->hal->sha256_init(c->hal->ctx); /* the same read feeds both */
            event(c, SB_EV_STAGED, T_FINISH, c->image_size, 0);
        }
    }
}

/* Run `kind` once every byte accepted so far is in flash (section 7.4's "written"). */
static void after_written(sb_core_t *c, uint8_t kind)
{
    sb_action_t a;
    unsigned i;
    a.kind = kind;
    a.offset = c->next_offset;
    if (c->action_count == 0 && c->written_offset >= c->next_offset) {
        run_action(c, &a);
        return;
    }
    unsigned readies = 0;
    for (i = 0; i < c->action_count; i++) {
        if (kind == A_ACK && c->actions[i].kind == kind && c->actions[i].offset == a.offset)
            return; /* two ACKs that fall together: one is sent (each resume's READY is) */
        readies += c->actions[i].kind == A_READY;
    }
    /* READYs get at most SB_MAX_WINDOW slots, so a flood of resume STARTs can never crowd
     * out an ACK (one per buffered chunk) or the verify: the READYs past that are the same
     * READY again, and one of them is already waiting. */
    if (kind == A_READY && readies >= SB_MAX_WINDOW)
        return;
    if (c->action_count < N_ACTIONS)
        c->actions[c->action_count++] = a;
}

static void run_written_actions(sb_core_t *c)
{
    while (c->action_count && c->actions[0].offset <= c->written_offset) {
        sb_action_t a = c->actions[0];
        c->action_count--;
        memmove(c->actions, c->actions + 1, c->action_count * sizeof(sb_action_t));
        run_action(c, &a);
    }
}

static uint16_t granted_chunk(uint32_t chunk_size)
{
    return (uint16_t)((chunk_size < SB_MAX_CHUNK ? chunk_size : SB_MAX_CHUNK) & ~3u);
}

static void on_start(sb_core_t *c, const uint32_t *f)
{
    if (f[0] == 0 || f[2] < 4) {
        refuse(c, SB_E_BAD_PARAM);
        return;
    }
    if (f[0] > c->cfg.staging_capacity) {
        refuse(c, SB_E_TOO_LARGE);
        return;
    }
    if (c->state == SB_COMPLETE) {
        refuse(c, SB_E_BAD_STATE); /* the switch is committed */
        return;
    }
    if (in_session(c)) {
        if (f[0] != c->image_size || f[1] != c->image_crc32) {
            refuse(c, SB_E_BAD_STATE); /* another image's session: ABORT first */
        } else if (c->state != SB_VERIFYING) { /* resume (section 7.6) */
            c->max_chunk = granted_chunk(f[2]);
            c->accepted_since_ack = c->rejected = 0; /* ERASING too: "since the START" */
            if (c->state == SB_RECEIVING)
                after_written(c, A_READY);
        }
        return;
    }
    if (is_signed(c)) { /* section 16.2: before anything is erased */
        if (c->cfg.image_state == SB_IMAGE_TEST) {
            refuse(c, SB_E_BAD_STATE); /* the staging bank holds the revert's image */
            return;
        }
        if (c->manifest != MF_ACCEPTED || get32(c->head + 12) != f[0] ||
            get32(c->head + 16) != f[1]) {
            refuse(c, SB_E_UNSIGNED);
            return;
        }
    }
    end_session(c, SB_IDLE);
    c->manifest = c->manifest == MF_ACCEPTED ? MF_SESSION : MF_NONE;
    c->image_size = f[0];
    c->image_crc32 = f[1];
    c->max_chunk = granted_chunk(f[2]);
    c->window = c->cfg.window;
    c->progressive = (uint8_t)(c->cfg.progressive_erase && (f[3] & 1u));
    c->pages = (uint16_t)((f[0] + SB_PAGE_SIZE - 1u) / SB_PAGE_SIZE);
    c->pages_erased = c->erase_started = 0;
    c->accepted_since_ack = c->rejected = 0;
    if (c->progressive) {
        c->state = SB_RECEIVING;
        send_ready(c);
    } else {
        c->state = SB_ERASING;
        pump(c);
    }
}

/* The refusals that get a reply: the first, then one in every window (section 7.4). */
static int rate_limited_reply(sb_core_t *c)
{
    if (c->rejected >= c->window)
        c->rejected = 0;
    return ++c->rejected == 1;
}

static void on_data(sb_core_t *c, const uint8_t *payload, uint16_t len)
{
    uint32_t offset = get32(payload), n = (uint32_t)len - 4u, end;
    uint16_t capacity = c->cfg.rx_buffer_chunks ? c->cfg.rx_buffer_chunks : c->window;
    uint8_t slot;
    if (c->state != SB_RECEIVING) {
        if (c->state != SB_ERASING || rate_limited_reply(c))
            refuse(c, SB_E_BAD_STATE);
        return;
    }
    if (n == 0 || n > c->max_chunk) {
        refuse(c, SB_E_BAD_PARAM);
        return;
    }
    if (offset != c->next_offset) {
        if (rate_limited_reply(c))
            send_status(c);
        return;
    }
    end = offset + n; /* no overflow: offset == next_offset <= image_size */
    if (end > c->image_size) {
        refuse(c, SB_E_BAD_OFFSET);
        return;
    }
    if ((n & 3u) && end != c->image_size) {
        refuse(c, SB_E_BAD_PARAM);
        return;
    }
    if (c->chunk_count >= capacity) { /* full: dropped, answered as a wrong offset */
        if (rate_limited_reply(c))
            send_status(c);
        return;
    }
    slot = (uint8_t)((c->chunk_head + c->chunk_count) % N_SLOTS);
    memset(c->chunk[slot], 0xFF, (n + 3u) & ~3u); /* the last partial word: 0xFF padding */
    memcpy(c->chunk[slot], payload + 4, n);
    c->chunk_offset[slot] = offset;
    c->chunk_len[slot] = (uint16_t)n;
    c->chunk_count++;
    c->next_offset = end;
    c->rejected = 0;
    if (end == c->image_size || ++c->accepted_since_ack >= (c->window > 1 ? c->window / 2 : 1)) {
        c->accepted_since_ack = 0;
        after_written(c, A_ACK);
    }
    pump(c);
    event(c, SB_EV_ACCEPTED, T_DATA, end, c->image_size);
}

/* CMD_OTA_MANIFEST's checks in section 16.1's order; nothing in flash changes. */
static void on_manifest(sb_core_t *c, const uint8_t *m, const uint32_t *f)
{
    uint8_t code = 0, i;
    if (in_session(c) || c->cfg.image_state == SB_IMAGE_TEST) {
        refuse(c, SB_E_BAD_STATE);
        return;
    }
    c->manifest = MF_NONE; /* a refused manifest leaves none accepted */
    for (i = 0; i < c->cfg.trusted_keys && c->cfg.trusted_key_id[i] != f[3]; i++)
        ;
    if (memcmp(m, "SBM1", 4) != 0 || m[4] != 1)
        code = SB_E_BAD_MANIFEST;
    else if (f[1] == 0)
        code = SB_E_BAD_PARAM;
    else if (f[1] > c->cfg.staging_capacity)
        code = SB_E_TOO_LARGE;
    else if (i == c->cfg.trusted_keys)
        code = SB_E_UNTRUSTED_KEY;
    else if (c->hal->ed25519_verify(c->hal->ctx, f[3], m, SB_MANIFEST_SIZE,
                                    m + SB_MANIFEST_SIZE) != 0)
        code = SB_E_BAD_SIGNATURE;
    else if (f[0] < c->cfg.security_counter)
        code = SB_E_DOWNGRADE;
    if (code) {
        refuse(c, code);
        return;
    }
    memcpy(c->head, m, SB_HEAD_SIZE);
    c->manifest = MF_ACCEPTED;
    send_status(c);
}

/* CMD_OTA_CONFIRM (section 16.5): an image in TEST becomes CONFIRMED and the counter is
 * raised, in one persisted record, before the MSG_INFO that shows them. */
static void on_confirm(sb_core_t *c)
{
    if (c->cfg.image_state == SB_IMAGE_TEST) {
        uint32_t counter = c->cfg.test_image_counter > c->cfg.security_counter
                               ? c->cfg.test_image_counter
                               : c->cfg.security_counter;
        if (c->hal->persist_confirmed(c->hal->ctx, counter) == 0) {
            c->cfg.image_state = SB_IMAGE_CONFIRMED;
            c->cfg.security_counter = counter;
            event(c, SB_EV_CONFIRMED, T_CONFIRM, counter, 0);
        } /* else still TEST, which the MSG_INFO shows: the host may confirm again */
    }
    send_info(c);
}

static void handle(sb_core_t *c, uint8_t type, const uint8_t *p, uint16_t n)
{
    uint32_t f[4];
    int bad = sb_parse_command(type, p, n, f);
    c->answering = type;
    if ((type == T_MANIFEST || type == T_CONFIRM) && !is_signed(c))
        bad = SB_E_UNKNOWN_COMMAND; /* a v1 device (section 16) */
    if (bad) {
        refuse(c, (uint8_t)bad);
        return;
    }
    switch (type) {
    case T_INFO:
        send_info(c);
        break;
    case T_STATUS:
        send_status(c);
        if (c->state == SB_RECEIVING) { /* a lost ACK cannot starve the host */
            c->accepted_since_ack = 0;
            after_written(c, A_ACK);
        }
        break;
    case T_ABORT:
        if (c->state != SB_COMPLETE) {
            end_session(c, SB_IDLE);
            c->manifest = MF_NONE; /* ABORT discards an accepted manifest too */
        }
        send_status(c);
        break;
    case T_MANIFEST:
        on_manifest(c, p, f);
        break;
    case T_CONFIRM:
        on_confirm(c);
        break;
    case T_START:
        on_start(c, f);
        break;
    case T_DATA:
        on_data(c, p, n);
        break;
    default: /* T_FINISH */
        if (c->state != SB_RECEIVING || c->next_offset != c->image_size) {
            refuse(c, SB_E_BAD_STATE);
            break;
        }
        c->state = SB_VERIFYING;
        after_written(c, A_VERIFY); /* the last chunk's ACK leaves first */
        break;
    }
}

static void event(sb_core_t *c, uint8_t kind, uint8_t type, uint32_t a, uint32_t b)
{
    if (c->hal->event)
        c->hal->event(c->hal->ctx, kind, type, a, b);
}

static void handle_frame(sb_core_t *c, uint8_t type, const uint8_t *p, uint16_t n)
{
    event(c, SB_EV_COMMAND, type, 0, 0);
    handle(c, type, p, n);
    event(c, SB_EV_HANDLED, type, c->state, 0);
}

/* ---- frames in, the stall's inbox ---------------------------------------------------- */

static void on_frame(void *arg, uint8_t type, const uint8_t *p, uint16_t n)
{
    sb_core_t *c = (sb_core_t *)arg;
    if ((c->op_kind != OP_ERASE || c->op_deferred) && c->inbox_used == 0) {
        handle_frame(c, type, p, n);
        return;
    }
    if (SB_INBOX_BYTES - c->inbox_used < n + 3u) {
        c->inbox_dropped++; /* as a full radio queue would: the host's timeout recovers */
        return;
    }
    c->inbox[c->inbox_used] = type;
    c->inbox[c->inbox_used + 1] = (uint8_t)n;
    c->inbox[c->inbox_used + 2] = (uint8_t)(n >> 8);
    memcpy(c->inbox + c->inbox_used + 3, p, n);
    c->inbox_used = (uint16_t)(c->inbox_used + n + 3u);
}

static void handle_inbox(sb_core_t *c)
{
    while (c->inbox_head < c->inbox_used) {
        const uint8_t *e = c->inbox + c->inbox_head;
        uint16_t n = (uint16_t)(e[1] | (e[2] << 8));
        c->inbox_head = (uint16_t)(c->inbox_head + n + 3u);
        handle_frame(c, e[0], e + 3, n);
    }
    c->inbox_head = c->inbox_used = 0;
}

/* ---- the flash ----------------------------------------------------------------------- */

static void start_op(sb_core_t *c)
{
    int failed;
    c->op_deferred = 0;
    if (c->op_kind == OP_ERASE) {
        failed = c->hal->flash_erase_page(c->hal->ctx, c->op_page);
        if (failed == SB_FLASH_DEFERRED) {
            c->op_deferred = 1;
            failed = 0;
        }
    } else {
        uint8_t s = c->op_slot;
        failed = c->hal->flash_write(c->hal->ctx, c->chunk_offset[s], c->chunk[s],
                                     (c->chunk_len[s] + 3u) / 4u);
    }
    if (failed)
        sb_flash_done(c, 0);
}

static void pump(sb_core_t *c)
{
    if (c->op_kind != OP_NONE || c->in_completion)
        return;
    if (c->op_retried == 1) { /* the failed operation, once more */
        c->op_retried = 2;
        c->op_kind = c->op_page == 0xFFFFFFFFu ? OP_WRITE : OP_ERASE;
        start_op(c);
        return;
    }
    c->op_retried = 0;
    c->op_generation = c->generation;
    if (c->state == SB_ERASING && !c->progressive) {
        if (c->erase_started < c->pages) {
            c->op_kind = OP_ERASE;
            c->op_command = T_START;
            c->op_page = c->erase_started++;
            start_op(c);
        }
        return;
    }
    if (c->chunk_count && (c->state == SB_RECEIVING || c->state == SB_VERIFYING)) {
        uint8_t s = c->chunk_head;
        c->op_command = T_DATA;
        if (c->progressive &&
            c->erase_started <= (c->chunk_offset[s] + c->chunk_len[s] - 1u) / SB_PAGE_SIZE) {
            c->op_kind = OP_ERASE; /* erased just before its first write (section 8) */
            c->op_page = c->erase_started++;
        } else {
            c->op_kind = OP_WRITE;
            c->op_page = 0xFFFFFFFFu;
            c->op_slot = s;
        }
        start_op(c);
    }
}

static int read_back_ok(sb_core_t *c, uint8_t kind)
{
    uint8_t buf[32];
    uint32_t off, len, done, n;
    if (kind == OP_ERASE) {
        off = c->op_page * SB_PAGE_SIZE;
        len = SB_PAGE_SIZE;
    } else {
        off = c->chunk_offset[c->op_slot];
        len = (c->chunk_len[c->op_slot] + 3u) & ~3u;
    }
    for (done = 0; done < len; done += n) {
        n = len - done < sizeof buf ? len - done : (uint32_t)sizeof buf;
        c->hal->flash_read(c->hal->ctx, off + done, buf, n);
        if (kind == OP_ERASE) {
            uint32_t i;
            for (i = 0; i < n; i++)
                if (buf[i] != 0xFFu)
                    return 0;
        } else if (memcmp(buf, (const uint8_t *)c->chunk[c->op_slot] + done, n) != 0) {
            return 0;
        }
    }
    return 1;
}

static void flash_done(sb_core_t *c, int ok)
{
    uint8_t kind = c->op_kind;
    uint8_t current = c->op_generation == c->generation;
    if (kind == OP_NONE)
        return;
    ok = ok && read_back_ok(c, kind);
    c->op_kind = OP_NONE;
    c->in_completion = 1;
    if (!ok && c->op_retried == 0) {
        c->op_retried = 1; /* retried once: a write's retry is the word's second write */
    } else if (!ok) {
        c->op_retried = 0;
        if (current) {
            end_session(c, SB_ERROR);
            send_error(c, SB_E_FLASH_ERROR, c->op_command);
        }
    } else if (current && kind == OP_ERASE) {
        c->op_retried = 0;
        c->pages_erased++;
        if (c->state == SB_ERASING)
            send4(c, M_PROGRESS, 1 /* erase */, (c->op_page + 1u) * SB_PAGE_SIZE,
                  (uint32_t)c->pages * SB_PAGE_SIZE, 0);
        event(c, SB_EV_ERASED, c->op_command, (uint32_t)c->pages_erased * SB_PAGE_SIZE,
              (uint32_t)c->pages * SB_PAGE_SIZE);
        if (c->state == SB_ERASING) {
            if (c->op_page + 1u == c->pages) {
                c->state = SB_RECEIVING;
                send_ready(c);
            }
        }
    } else if (current) {
        uint8_t s = c->op_slot;
        c->op_retried = 0;
        c->chunk_head = (uint8_t)((s + 1u) % N_SLOTS);
        c->chunk_count--;
        c->written_offset = c->chunk_offset[s] + c->chunk_len[s];
        run_written_actions(c);
    } else {
        c->op_retried = 0;
    }
    handle_inbox(c); /* what arrived during the page erase, after its PROGRESS */
    c->in_completion = 0;
    pump(c);
}

/* ---- entry points -------------------------------------------------------------------- */

int sb_init(sb_core_t *core, const sb_hal_t *hal, const sb_config_t *cfg)
{
    int hooks = !!hal->sha256_init + !!hal->sha256_update + !!hal->sha256_final +
                !!hal->ed25519_verify + !!hal->persist_signed_pending + !!hal->persist_confirmed;
    if (cfg->window < 1 || cfg->window > SB_MAX_WINDOW || cfg->rx_buffer_chunks > cfg->window ||
        cfg->trusted_keys > SB_MAX_KEYS || (hooks != 0 && hooks != 6))
        return -1;
    memset(core, 0, sizeof *core);
    core->hal = hal;
    core->cfg = *cfg;
    core->state = SB_IDLE;
    return 0;
}

void sb_rx(sb_core_t *core, const uint8_t *data, size_t len)
{
    sb_decoder_feed(&core->dec, data, len, 1, core->hal->now_us(core->hal->ctx), on_frame,
                    core);
}

void sb_flash_done(sb_core_t *core, int ok)
{
    flash_done(core, ok);
}

void sb_flash_started(sb_core_t *core)
{
    core->op_deferred = 0;
}

void sb_tx_complete(sb_core_t *core)
{
    core->tx_complete = 1;
}

void sb_link_lost(sb_core_t *core)
{
    sb_decoder_reset(&core->dec);
}

uint64_t sb_next_deadline_us(const sb_core_t *core)
{
    return core->state == SB_COMPLETE && !core->resetting ? core->done_at_us + TX_WAIT_US : 0u;
}

uint8_t sb_state(const sb_core_t *core)
{
    return core->state;
}

void sb_status(const sb_core_t *core, uint32_t out[4])
{
    uint8_t s = in_session(core);
    out[0] = core->state;
    out[1] = s ? core->next_offset : 0u;
    out[2] = s ? core->image_size : 0u;
    out[3] = s ? core->image_crc32 : 0u;
}

static void verify_step(sb_core_t *c)
{
    uint8_t buf[SB_VERIFY_STEP];
    uint32_t n = c->image_size - c->verify_pos;
    if (n > SB_VERIFY_STEP)
        n = SB_VERIFY_STEP;
    c->hal->flash_read(c->hal->ctx, c->verify_pos, buf, n);
    c->verify_crc = sb_crc32_update(c->verify_crc, buf, n);
    if (c->manifest == MF_SESSION)
        c->hal->sha256_update(c->hal->ctx, buf, n);
    c->verify_pos += n;
    if (c->verify_pos < c->image_size)
        return;
    c->verifying = 0;
    if (c->verify_crc != c->image_crc32) {
        end_session(c, SB_ERROR);
        send_error(c, SB_E_CRC_MISMATCH, T_FINISH);
        return;
    }
    if (c->manifest == MF_SESSION) { /* section 16.3: the staged flash's SHA-256 */
        uint8_t digest[32];
        c->hal->sha256_final(c->hal->ctx, digest);
        if (memcmp(digest, c->head + 24, sizeof digest) != 0) {
            end_session(c, SB_ERROR);
            send_error(c, SB_E_DIGEST_MISMATCH, T_FINISH);
            return;
        }
        event(c, SB_EV_VERIFIED, T_FINISH, c->image_size, 0);
    }
    if ((c->manifest == MF_SESSION
             ? c->hal->persist_signed_pending(c->hal->ctx, c->image_size, c->image_crc32,
                                              c->head)
             : c->hal->persist_pending(c->hal->ctx, c->image_size, c->image_crc32)) != 0) {
        end_session(c, SB_ERROR); /* section 7.8: a failed persist */
        send_error(c, SB_E_FLASH_ERROR, T_FINISH);
    } else { /* persisted before DONE: from here any reset switches */
        c->state = SB_COMPLETE;
        c->tx_complete = 0;
        c->done_at_us = c->hal->now_us(c->hal->ctx);
        send4(c, M_DONE, c->verify_crc, 0, 0, 0);
    }
}

int sb_poll(sb_core_t *core)
{
    if (core->verifying && core->state == SB_VERIFYING) {
        verify_step(core);
        return core->verifying || core->state == SB_COMPLETE;
    }
    if (core->state == SB_COMPLETE && !core->resetting &&
        (core->tx_complete || core->hal->now_us(core->hal->ctx) - core->done_at_us >= TX_WAIT_US)) {
        /* DONE is on air (or 1 s passed): end the link and reset. A platform whose reset
         * returns (a test harness that keeps the device to look at COMPLETE) goes on
         * answering in COMPLETE. */
        core->resetting = 1;
        core->hal->reset(core->hal->ctx);
        return 0;
    }
    return 0;
}

size_t sb_core_size(void)
{
    return sizeof(sb_core_t);
}
