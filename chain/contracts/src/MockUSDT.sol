// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MockUSDT: a 6-decimal stand-in for USDT on dev chains and in tests.
/// @notice Deployed only on development chains; the owner mints freely to fund demo users.
contract MockUSDT is ERC20, Ownable {
    constructor(address initialOwner) ERC20("Mock Tether USD", "USDT") Ownable(initialOwner) {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
