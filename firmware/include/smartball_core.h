/*
 * SmartBall OTA protocol v1: the device side, as a portable C99 core.
 *
 * One instance struct (sb_core_t), no malloc, fixed buffers, never waits. The firmware
 * feeds it what the radio receives (sb_rx), tells it when a flash operation it started
 * has ended (sb_flash_done), when notifications left the radio (sb_tx_complete), when the
 * link dropped (sb_link_lost), and calls sb_poll from its main loop while sb_poll says
 * there is work. Everything platform-specific is behind sb_hal_t. docs/firmware.md says
 * how to wire it on bare metal, the SoftDevice and Zephyr; docs/protocol.md is the contract.
 */
#ifndef SMARTBALL_CORE_H
#define SMARTBALL_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Compile-time sizes (RAM per instance, see docs/firmware.md). */
#ifndef SB_MAX_WINDOW
#define SB_MAX_WINDOW 16u /* receive buffer slots: the largest window granted */
#endif
#ifndef SB_MAX_CHUNK
#define SB_MAX_CHUNK 500u /* the protocol's largest chunk; smaller saves RAM */
#endif
#ifndef SB_INBOX_BYTES
/* Frames that arrive while a page erase holds the core (each takes 3 + payload bytes). A
 * progressive session's host may have a whole window of chunks in flight during an erase:
 * this default holds them all; a smaller inbox drops what does not fit (the host recovers
 * through STATUS, slower). */
#define SB_INBOX_BYTES (SB_MAX_WINDOW * (SB_MAX_CHUNK + 7u))
#endif
#ifndef SB_VERIFY_STEP
#define SB_VERIFY_STEP 16u /* bytes of the verify per sb_poll call */
#endif

#define SB_PAGE_SIZE 4096u
#define SB_MAX_PAYLOAD 512u
#define SB_MAX_FRAME (SB_MAX_PAYLOAD + 6u)
#define SB_MAX_ERROR_TEXT 48u
#ifndef SB_MAX_KEYS
#define SB_MAX_KEYS 4u /* trusted keys a signed-only device holds (section 16) */
#endif
#define SB_MANIFEST_SIZE 56u
#define SB_HEAD_SIZE 120u /* the manifest and its Ed25519 signature: CMD_OTA_MANIFEST */

enum sb_state { SB_IDLE = 0, SB_ERASING = 1, SB_RECEIVING = 2, SB_VERIFYING = 3,
                SB_COMPLETE = 4, SB_ERROR = 5 };

enum sb_event { SB_EV_COMMAND = 1, SB_EV_HANDLED = 2, SB_EV_ERASED = 3, SB_EV_ACCEPTED = 4,
                SB_EV_STAGED = 5, SB_EV_VERIFIED = 6, SB_EV_CONFIRMED = 7 };

enum sb_error { SB_E_BAD_FRAME = 1, SB_E_BAD_STATE = 2, SB_E_BAD_OFFSET = 3,
                SB_E_TOO_LARGE = 4, SB_E_CRC_MISMATCH = 5, SB_E_FLASH_ERROR = 6,
                SB_E_UNKNOWN_COMMAND = 7, SB_E_BAD_PARAM = 8, SB_E_BAD_MANIFEST = 9,
                SB_E_UNTRUSTED_KEY = 10, SB_E_BAD_SIGNATURE = 11, SB_E_DOWNGRADE = 12,
                SB_E_UNSIGNED = 13, SB_E_DIGEST_MISMATCH = 14 };

/* The running image's state on a signed-only device (section 16.7). */
enum sb_image_state { SB_IMAGE_CONFIRMED = 0, SB_IMAGE_TEST = 1, SB_IMAGE_REVERTED = 2 };

/* flash_erase_page's answer when the erase is accepted but starts later (the platform
 * yields to the radio first): the core goes on handling commands until sb_flash_started. */
#define SB_FLASH_DEFERRED 1

/*
 * The platform. Flash offsets are relative to the staging bank's start. Operations start
 * and return at once (0: started; SB_FLASH_DEFERRED: an erase that starts later; negative:
 * could not start, taken as a failed operation);
 * the platform calls sb_flash_done once the operation is over, from its event handler or
 * main loop, never from inside flash_erase_page/flash_write (the core would recurse):
 * sd_flash_* raises an event, Zephyr's flash API returns, a bare-metal NVMC HAL notes the
 * end and reports it from its poll (hal/nrf52840_nvmc.c). One
 * operation at a time. The source of flash_write stays valid until sb_flash_done.
 */
typedef struct sb_hal {
    void *ctx;
    int (*flash_erase_page)(void *ctx, uint32_t page);
    int (*flash_write)(void *ctx, uint32_t offset, const uint32_t *words, uint32_t n_words);
    /* Synchronous read of the staging bank (memory-mapped on the nRF52840). */
    void (*flash_read)(void *ctx, uint32_t offset, uint8_t *out, uint32_t len);
    /* A monotonic microsecond clock. */
    uint64_t (*now_us)(void *ctx);
    /* Send one whole frame as notification(s) on NUS TX. */
    void (*notify)(void *ctx, const uint8_t *frame, uint16_t len);
    /* Persist {image_size, image_crc32, PENDING} power-safely; 0 on success. */
    int (*persist_pending)(void *ctx, uint32_t image_size, uint32_t image_crc32);
    /* End the link (HCI 0x13) and reset into the bootloader. Need not return. */
    void (*reset)(void *ctx);
    /* Optional (NULL: none): what the core did, for a log or a simulator's fault
     * triggers: SB_EV_COMMAND (a frame is about to be handled: its type), SB_EV_HANDLED
     * (handled: type, a = the state now), SB_EV_ERASED (a staging page erased, both modes:
     * a = bytes erased so far, b = the session's erase total), SB_EV_ACCEPTED (a chunk
     * accepted: a = next_expected_offset, b = image_size); signed updates:
     * SB_EV_STAGED (the verify starts: every byte is in flash; a = image_size),
     * SB_EV_VERIFIED (CRC-32 and SHA-256 passed, PENDING not yet persisted),
     * SB_EV_CONFIRMED (CONFIRM persisted, MSG_INFO not yet sent). */
    void (*event)(void *ctx, uint8_t kind, uint8_t type, uint32_t a, uint32_t b);
    /*
     * Signed updates (section 16), the platform's crypto and records: all NULL = a v1
     * device (no SIGNED_IMAGES), so a HAL written before them keeps working; either all or
     * none (sb_init refuses a half). The core has no crypto of its own.
     */
    /* One SHA-256 at a time, over the staged flash the core reads back (in steps). */
    void (*sha256_init)(void *ctx);
    void (*sha256_update)(void *ctx, const uint8_t *data, uint32_t len);
    void (*sha256_final)(void *ctx, uint8_t digest[32]);
    /* 0 if sig is trusted key key_id's Ed25519 signature (RFC 8032) over msg; the
     * platform holds the public keys (the core only checks the id is trusted first). */
    int (*ed25519_verify)(void *ctx, uint32_t key_id, const uint8_t *msg, uint32_t len,
                          const uint8_t sig[64]);
    /* Persist {image_size, image_crc32, PENDING, head} power-safely instead of
     * persist_pending: the bootloader verifies head again before it swaps; 0 on success. */
    int (*persist_signed_pending)(void *ctx, uint32_t image_size, uint32_t image_crc32,
                                  const uint8_t head[SB_HEAD_SIZE]);
    /* Persist {image state CONFIRMED, security_counter} in ONE record write; 0 on success. */
    int (*persist_confirmed)(void *ctx, uint32_t security_counter);
} sb_hal_t;

typedef struct sb_config {
    uint16_t window;            /* granted in READY, 1..SB_MAX_WINDOW */
    uint16_t rx_buffer_chunks;  /* 0: window; else at most window */
    uint32_t staging_capacity;  /* bytes, at most the staging bank */
    uint8_t progressive_erase;  /* advertise Capability.PROGRESSIVE_ERASE */
    uint8_t fw_version[3];      /* the running image's version */
    uint32_t active_image_size;
    uint32_t active_image_crc32;
    /* Signed updates (used with the HAL's crypto hooks): the provisioning and what the
     * platform persisted, read at boot. */
    uint32_t security_counter;            /* the device's */
    uint8_t image_state;                  /* enum sb_image_state of the running image */
    uint8_t trusted_keys;                 /* how many of trusted_key_id, 0..SB_MAX_KEYS */
    uint32_t trusted_key_id[SB_MAX_KEYS]; /* [0] is the one MSG_INFO names */
    uint32_t test_image_counter;          /* in TEST: the image's manifest's counter */
} sb_config_t;

typedef struct sb_decoder {
    uint8_t buf[SB_MAX_FRAME];
    uint16_t len;
    uint8_t has_last;
    uint64_t last_us;
    uint32_t frames, dropped_bytes, bad_crc, bad_length;
} sb_decoder_t;

typedef struct sb_action { uint8_t kind; uint32_t offset; } sb_action_t;

typedef struct sb_core {
    const sb_hal_t *hal;
    sb_config_t cfg;
    sb_decoder_t dec;
    /* Frames received while a page erase stalls the core: [type, len lo, len hi, payload]. */
    uint8_t inbox[SB_INBOX_BYTES];
    uint16_t inbox_head, inbox_used;
    uint32_t inbox_dropped;
    uint8_t state, answering, progressive, in_completion;
    /* The session (valid in ERASING..COMPLETE). */
    uint32_t image_size, image_crc32, next_offset, written_offset;
    uint16_t max_chunk, window, accepted_since_ack, rejected;
    uint16_t pages, pages_erased, erase_started; /* erase progress (both modes) */
    uint16_t generation;                         /* bumped by every session end */
    /* Receive buffer: accepted chunks not yet written, oldest at chunk_head. One extra slot
     * keeps a write that is under way when its session ends intact. */
    uint32_t chunk[SB_MAX_WINDOW + 1][SB_MAX_CHUNK / 4];
    uint32_t chunk_offset[SB_MAX_WINDOW + 1];
    uint16_t chunk_len[SB_MAX_WINDOW + 1];
    uint8_t chunk_head, chunk_count;
    /* The flash operation under way. */
    uint8_t op_kind, op_retried, op_command, op_slot, op_deferred;
    uint16_t op_generation;
    uint32_t op_page, op_offset;
    /* What waits for the bytes accepted so far to be written (ACK, READY, verify). */
    sb_action_t actions[2u * SB_MAX_WINDOW + 1u]; /* at most one ACK and one READY per
                                                   * buffered chunk, and the verify */
    uint8_t action_count;
    /* Verify and activation. */
    uint32_t verify_pos, verify_crc;
    uint8_t verifying, tx_complete, resetting;
    uint64_t done_at_us;
    /* Signed updates: the accepted manifest (no session) or the session's (RAM). */
    uint8_t manifest; /* 0 none, 1 accepted, 2 the session's */
    uint8_t head[SB_HEAD_SIZE];
} sb_core_t;

/* Boot: IDLE, no session. cfg->window must be 1..SB_MAX_WINDOW, trusted_keys at most
 * SB_MAX_KEYS, the HAL's signed hooks all set or all NULL. Returns 0, or -1. */
int sb_init(sb_core_t *core, const sb_hal_t *hal, const sb_config_t *cfg);
/* Bytes written to NUS RX (any split). */
void sb_rx(sb_core_t *core, const uint8_t *data, size_t len);
/* The flash operation started last is over; ok: what the platform reported (the core
 * also reads the result back). */
void sb_flash_done(sb_core_t *core, int ok);
/* A deferred page erase (SB_FLASH_DEFERRED) has started: from now until sb_flash_done the
 * core holds the commands that arrive, to handle them after the page's PROGRESS (§7.7). */
void sb_flash_started(sb_core_t *core);
/* Every notification sent so far has left the radio (BLE_GATTS_EVT_HVN_TX_COMPLETE). */
void sb_tx_complete(sb_core_t *core);
/* The connection dropped: the session stays, a partial frame goes. */
void sb_link_lost(sb_core_t *core);
/* Do one step of pending work; returns 1 while more is ready now, else 0. */
int sb_poll(sb_core_t *core);
/* When sb_poll must run next although nothing happened (0: no timer). */
uint64_t sb_next_deadline_us(const sb_core_t *core);
uint8_t sb_state(const sb_core_t *core);
/* What MSG_OTA_STATUS would say: state, next_expected_offset, image_size, image_crc32. */
void sb_status(const sb_core_t *core, uint32_t out[4]);

/* The codec, exported for tests and for a firmware's own use. */
uint16_t sb_crc16(const uint8_t *data, size_t len);
uint32_t sb_crc32_update(uint32_t crc, const uint8_t *data, size_t len); /* start 0 */
/* Build a frame; returns its length (payload_len at most SB_MAX_PAYLOAD), else 0. */
uint16_t sb_frame(uint8_t *out, uint8_t type, const uint8_t *payload, uint16_t payload_len);
/* Feed a decoder; each frame is passed to on_frame(arg, type, payload, len). has_time: use
 * now_us for the idle rule. */
void sb_decoder_feed(sb_decoder_t *dec, const uint8_t *data, size_t len, int has_time,
                     uint64_t now_us,
                     void (*on_frame)(void *arg, uint8_t type, const uint8_t *p, uint16_t n),
                     void *arg);
void sb_decoder_reset(sb_decoder_t *dec);
/* A device message's frame into out (56 bytes at most); f per type: MSG_INFO protocol,
 * major, minor, patch, size, crc, capacity, capabilities (with SIGNED_IMAGES, 0x2, three
 * more: security_counter, image_state, trusted_key_id); READY max_chunk, window; PROGRESS
 * phase, done, total; STATUS state, next, size, crc; ACK and DONE the value; ERROR code,
 * command (+ text). Returns the length, 0 for another type. */
uint16_t sb_encode(uint8_t *out, uint8_t type, const uint32_t *f, const uint8_t *text,
                   uint16_t text_len);
size_t sb_core_size(void);
/* A command's fields: returns 0 and fills fields (START: size, crc, chunk, flags; DATA:
 * offset, data length; MANIFEST: security_counter, image_size, image_crc32, key_id),
 * SB_E_BAD_FRAME, or SB_E_UNKNOWN_COMMAND. */
int sb_parse_command(uint8_t type, const uint8_t *payload, uint16_t len, uint32_t fields[4]);

#ifdef __cplusplus
}
#endif
#endif
