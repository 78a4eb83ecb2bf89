/* Minimal Cortex-M4 start for qemu's mps2-an386 board (used by biper's tests and figures, not
 * part of an export): vector table at 0 (stack at the top of the 4 MiB SRAM at 0x20000000),
 * FPU enabled, then newlib's semihosting _start (link with --specs=rdimon.specs). */
#include <stdint.h>
extern void _start(void);
extern uint32_t __stack_top;
void reset_handler(void) {
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
    __asm volatile ("dsb\n isb");
    _start();
    for (;;) {}
}
static void fault(void) { for (;;) {} }
__attribute__((section(".vectors"), used))
const void *vectors[16] = {(void *)0x20400000u, (void *)reset_handler, (void *)fault, (void *)fault,
                           (void *)fault, (void *)fault, (void *)fault};
