/* nRF52840 NVMC, register level (nRF52840 Product Specification v1.7, section 4.3). */
#include "nrf52840_nvmc.h"

#include <string.h>

#define NVMC_BASE 0x4001E000u
#define NVMC_READY (*(volatile uint32_t *)(NVMC_BASE + 0x400u))
#define NVMC_CONFIG (*(volatile uint32_t *)(NVMC_BASE + 0x504u))
#define NVMC_ERASEPAGE (*(volatile uint32_t *)(NVMC_BASE + 0x508u))
#define CONFIG_REN 0u
#define CONFIG_WEN 1u
#define CONFIG_EEN 2u

static volatile uint8_t op_over;

static void wait_ready(void)
{
    while (NVMC_READY == 0u) {
    }
}

static void config(uint32_t mode)
{
    NVMC_CONFIG = mode;
    wait_ready();
}

static void erase_at(uint32_t address)
{
    config(CONFIG_EEN);
    NVMC_ERASEPAGE = address; /* the CPU halts here for t_ERASEPAGE (85 ms) */
    wait_ready();
    config(CONFIG_REN);
}

static void write_at(uint32_t address, const uint32_t *words, uint32_t n_words)
{
    uint32_t i;
    config(CONFIG_WEN);
    for (i = 0; i < n_words; i++) {
        *(volatile uint32_t *)(address + 4u * i) = words[i];
        wait_ready();
    }
    config(CONFIG_REN);
}

int nrf52840_nvmc_erase_page(void *ctx, uint32_t page)
{
    (void)ctx;
    if (page >= NRF_STAGING_PAGES)
        return -1;
    erase_at(NRF_STAGING_BASE + page * 4096u);
    op_over = 1; /* the core reads the page back to check it */
    return 0;
}

int nrf52840_nvmc_write(void *ctx, uint32_t offset, const uint32_t *words, uint32_t n_words)
{
    (void)ctx;
    if ((offset & 3u) || offset + 4u * n_words > NRF_STAGING_PAGES * 4096u)
        return -1;
    write_at(NRF_STAGING_BASE + offset, words, n_words);
    op_over = 1;
    return 0;
}

void nrf52840_nvmc_read(void *ctx, uint32_t offset, uint8_t *out, uint32_t len)
{
    (void)ctx;
    memcpy(out, (const void *)(NRF_STAGING_BASE + offset), len); /* memory-mapped */
}

static const nrf52840_record_t *record(unsigned which)
{
    return (const nrf52840_record_t *)(NRF_RECORD_BASE + which * 4096u);
}

static int record_valid(const nrf52840_record_t *r)
{
    return r->magic == NRF_RECORD_MAGIC &&
           r->record_crc ==
               sb_crc32_update(0, (const uint8_t *)r, offsetof(nrf52840_record_t, record_crc));
}

/* Power-safe: the new record goes to the page that does not hold the newest valid one, so
 * a power loss while writing it leaves the other intact (protocol section 9). */
int nrf52840_nvmc_persist_pending(void *ctx, uint32_t image_size, uint32_t image_crc32)
{
    nrf52840_record_t r;
    unsigned newest = 0, target;
    (void)ctx;
    if (record_valid(record(1)) &&
        (!record_valid(record(0)) || record(1)->sequence > record(0)->sequence))
        newest = 1;
    target = newest ^ 1u;
    r.magic = NRF_RECORD_MAGIC;
    r.sequence = record_valid(record(newest)) ? record(newest)->sequence + 1u : 1u;
    r.image_size = image_size;
    r.image_crc32 = image_crc32;
    r.pending = 1;
    r.record_crc = sb_crc32_update(0, (const uint8_t *)&r, offsetof(nrf52840_record_t, record_crc));
    erase_at(NRF_RECORD_BASE + target * 4096u);
    write_at(NRF_RECORD_BASE + target * 4096u, (const uint32_t *)&r, sizeof r / 4u);
    return memcmp(record(target), &r, sizeof r) == 0 ? 0 : -1;
}

void nrf52840_nvmc_hal(sb_hal_t *hal)
{
    hal->flash_erase_page = nrf52840_nvmc_erase_page;
    hal->flash_write = nrf52840_nvmc_write;
    hal->flash_read = nrf52840_nvmc_read;
    hal->persist_pending = nrf52840_nvmc_persist_pending;
}

void nrf52840_nvmc_poll(sb_core_t *core)
{
    if (op_over) {
        op_over = 0;
        sb_flash_done(core, 1);
    }
}
