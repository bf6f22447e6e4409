// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title StockToken: one per listed symbol, 18 decimals so allocations can be fractional.
/// @notice Only the vault that created it mints and burns.
contract StockToken is ERC20 {
    address public immutable vault;
    bytes32 public immutable symbolKey;

    error OnlyVault(address caller);

    constructor(string memory name_, string memory ticker_, bytes32 symbolKey_, address vault_)
        ERC20(name_, ticker_)
    {
        vault = vault_;
        symbolKey = symbolKey_;
    }

    modifier onlyVault() {
        if (msg.sender != vault) revert OnlyVault(msg.sender);
        _;
    }

    function mint(address to, uint256 amount) external onlyVault {
        _mint(to, amount);
    }

    function burn(address from, uint256 amount) external onlyVault {
        _burn(from, amount);
    }
}
