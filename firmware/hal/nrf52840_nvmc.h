/*
 * A register-level flash HAL for the SmartBall core on the nRF52840 without a SoftDevice
 * (bare metal; docs/firmware.md). The NVMC halts the CPU during an erase or a write, so
 * each operation is over when its call returns; the completion is reported from the main
 * loop (nrf52840_nvmc_poll), never from inside the core's call, as sb_flash_done requires.
 */
#ifndef NRF52840_NVMC_H
#define NRF52840_NVMC_H

#include "smartball_core.h"

/* The staging bank and the two pages of the activation record: board-specific. The
 * defaults leave the Adafruit bootloader (0xF4000..) alone and hold 480 KiB of staging. */
#ifndef NRF_STAGING_BASE
#define NRF_STAGING_BASE 0x0007A000u
#endif
#ifndef NRF_STAGING_PAGES
#define NRF_STAGING_PAGES 120u
#endif
#ifndef NRF_RECORD_BASE
#define NRF_RECORD_BASE (NRF_STAGING_BASE + NRF_STAGING_PAGES * 4096u) /* 2 pages */
#endif

/* Fills the flash and persist entries of `hal` (the clock, notify and reset are the
 * application's: its timer, its BLE stack, NVIC_SystemReset). */
void nrf52840_nvmc_hal(sb_hal_t *hal);
/* From the main loop: reports a finished operation to the core. */
void nrf52840_nvmc_poll(sb_core_t *core);

int nrf52840_nvmc_erase_page(void *ctx, uint32_t page);
int nrf52840_nvmc_write(void *ctx, uint32_t offset, const uint32_t *words, uint32_t n_words);
void nrf52840_nvmc_read(void *ctx, uint32_t offset, uint8_t *out, uint32_t len);
int nrf52840_nvmc_persist_pending(void *ctx, uint32_t image_size, uint32_t image_crc32);

/* The activation record the bootloader reads: the newer valid one of the two pages. */
typedef struct nrf52840_record {
    uint32_t magic;       /* NRF_RECORD_MAGIC */
    uint32_t sequence;    /* the higher valid one wins */
    uint32_t image_size;
    uint32_t image_crc32;
    uint32_t pending;     /* 1: PENDING; the bootloader writes 0 after its switch */
    uint32_t record_crc;  /* CRC-32 of the fields above */
} nrf52840_record_t;
#define NRF_RECORD_MAGIC 0x53425231u /* "SBR1" */

#endif
