// A UART transmitter (8N1, idle high) that prints BANNER every GAP_CLKS clocks, and a wire
// from loop_in to loop_out for the bench's loopback check. Defaults: the iCEBreaker's 12 MHz
// clock, 115200 baud, a banner every 20 ms.
module uart_banner #(
    parameter integer CLK_HZ   = 12_000_000,
    parameter integer BAUD     = 115_200,
    parameter integer GAP_CLKS = 240_000
) (
    input  wire clk,
    input  wire loop_in,
    output wire loop_out,
    output reg  uart_tx = 1'b1
);
  localparam integer DIV = CLK_HZ / BAUD;
  localparam integer LEN = 20;

  function automatic [7:0] banner(input [4:0] i);
    case (i)
      0: banner = "S";  1: banner = "c";  2: banner = "a";  3: banner = "l";  4: banner = "e";
      5: banner = "r";  6: banner = "u";  7: banner = "n";  8: banner = "n";  9: banner = "e";
      10: banner = "r"; 11: banner = " "; 12: banner = "H"; 13: banner = "I"; 14: banner = "L";
      15: banner = " "; 16: banner = "O"; 17: banner = "K"; 18: banner = 8'h0d; default: banner = 8'h0a;
    endcase
  endfunction

  reg [31:0] wait_clks = 0;  // idle time left before the next banner
  reg [15:0] baud_cnt = 0;
  reg [3:0] bit_idx = 0;  // 0 start, 1-8 data, 9 stop
  reg [4:0] char_idx = 0;
  reg sending = 1'b0;
  wire [9:0] frame = {1'b1, banner(char_idx), 1'b0};

  assign loop_out = loop_in;

  always @(posedge clk) begin
    if (!sending) begin
      uart_tx <= 1'b1;
      if (wait_clks == 0) begin
        sending <= 1'b1;
        char_idx <= 0;
        bit_idx <= 0;
        baud_cnt <= 0;
      end else wait_clks <= wait_clks - 1;
    end else begin
      uart_tx <= frame[bit_idx];
      if (baud_cnt == DIV - 1) begin
        baud_cnt <= 0;
        if (bit_idx == 9) begin
          bit_idx <= 0;
          if (char_idx == LEN - 1) begin
            sending <= 1'b0;
            wait_clks <= GAP_CLKS;
          end else char_idx <= char_idx + 1'b1;
        end else bit_idx <= bit_idx + 1'b1;
      end else baud_cnt <= baud_cnt + 1'b1;
    end
  end
endmodule
