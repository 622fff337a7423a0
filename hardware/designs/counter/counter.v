// Four LEDs count up in binary: the board clock divided by 2**PRESCALE drives a 4-bit counter.
// At 100 MHz and PRESCALE = 23, led0 blinks at 100e6 / 2**24 = 5.96 Hz (the well-known
// "shift a 100 MHz counter down to the LEDs" test). The simulation sets PRESCALE = 5
// (checks.toml, [sim]) and scales time by 2**18, so it checks the same frequencies.
module counter #(
    parameter integer PRESCALE = 23
) (
    input  wire clk,
    output wire led0,
    output wire led1,
    output wire led2,
    output wire led3
);
  reg [PRESCALE+3:0] count = 0;

  always @(posedge clk) count <= count + 1'b1;

  assign {led3, led2, led1, led0} = count[PRESCALE+3:PRESCALE];
endmodule
