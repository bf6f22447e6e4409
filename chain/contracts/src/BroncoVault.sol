// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {StockToken} from "./StockToken.sol";

/// @title BroncoVault: USDT in, stock tokens out, and back.
/// @notice Users deposit USDT naming a listed symbol, or redeem stock tokens. The off-chain
/// operator buys or sells the shares at the broker and settles each deposit and redeem id
/// exactly once: the contract itself refuses a second settlement (AlreadySettled), so a
/// retried settlement transaction can never pay twice. A refund never exceeds the deposit.
/// Before its settlement, an operator may refund part or all of a deposit manually
/// (refundDeposit), at most once per refund id; manual refunds plus the settlement's refund
/// never exceed the deposit either.
/// Pause stops new deposits and redeems; cancel requests and settlement keep working so
/// that in-flight orders can always complete.
contract BroncoVault is AccessControl, Pausable {
    using SafeERC20 for IERC20;

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");

    struct DepositInfo {
        address user;
        bytes32 symbol;
        uint256 usdtAmount;
        bool cancelRequested;
        bool settled;
    }

    struct RedeemInfo {
        address user;
        bytes32 symbol;
        uint256 shares;
        bool settled;
    }

    IERC20 public immutable usdt;

    /// @notice Ids start at 1, so a zero user in `deposits(id)` means "no such deposit".
    uint256 public nextDepositId = 1;
    uint256 public nextRedeemId = 1;

    mapping(uint256 => DepositInfo) public deposits;
    mapping(uint256 => RedeemInfo) public redeems;
    /// @notice USDT refunded manually (refundDeposit) per deposit, before its settlement.
    mapping(uint256 => uint256) public refundedOf;
    /// @notice Refund ids already paid: each pays at most once.
    mapping(uint256 => bool) public refundIdUsed;
    mapping(bytes32 => StockToken) public tokenOf;
    mapping(bytes32 => bool) public isListed;
    bytes32[] private _symbols;

    event Deposit(
        uint256 indexed depositId, address indexed user, bytes32 indexed symbol, uint256 usdtAmount
    );
    event CancelRequested(uint256 indexed depositId, address indexed user);
    event Redeem(
        uint256 indexed redeemId, address indexed user, bytes32 indexed symbol, uint256 shares
    );
    event DepositSettled(
        uint256 indexed depositId, address indexed user, uint256 sharesMinted, uint256 usdtRefunded
    );
    event RedeemSettled(
        uint256 indexed redeemId, address indexed user, uint256 usdtPaid, uint256 sharesReturned
    );
    event DepositRefunded(
        uint256 indexed depositId, uint256 indexed refundId, address indexed user, uint256 amount
    );
    event SymbolListed(bytes32 indexed symbol, address token);
    event SymbolUnlisted(bytes32 indexed symbol);
    event ReserveWithdrawn(address indexed to, uint256 amount);

    error ZeroAmount();
    error ZeroAddress();
    error SymbolNotListed(bytes32 symbol);
    error SymbolAlreadyListed(bytes32 symbol);
    error UnknownDeposit(uint256 depositId);
    error UnknownRedeem(uint256 redeemId);
    error NotDepositor(uint256 depositId, address caller);
    error CancelAlreadyRequested(uint256 depositId);
    error AlreadySettled(uint256 id);
    error RefundAboveDeposit(uint256 depositId, uint256 refund, uint256 deposited);
    error RefundIdUsed(uint256 refundId);

    constructor(IERC20 usdt_, address admin, address operator) {
        if (address(usdt_) == address(0) || admin == address(0)) revert ZeroAddress();
        usdt = usdt_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (operator != address(0)) _grantRole(OPERATOR_ROLE, operator);
    }

    // --- listing and pause (admin) ---------------------------------------------------------

    /// @notice Lists a symbol, creating its stock token on first listing. Listing again after
    /// unlisting reuses the same token.
    function listSymbol(bytes32 symbol, string calldata name, string calldata ticker)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        returns (StockToken token)
    {
        if (isListed[symbol]) revert SymbolAlreadyListed(symbol);
        token = tokenOf[symbol];
        if (address(token) == address(0)) {
            token = new StockToken(name, ticker, symbol, address(this));
            tokenOf[symbol] = token;
            _symbols.push(symbol);
        }
        isListed[symbol] = true;
        emit SymbolListed(symbol, address(token));
    }

    /// @notice Stops new deposits for a symbol; holders can still redeem.
    function unlistSymbol(bytes32 symbol) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!isListed[symbol]) revert SymbolNotListed(symbol);
        isListed[symbol] = false;
        emit SymbolUnlisted(symbol);
    }

    function symbols() external view returns (bytes32[] memory) {
        return _symbols;
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    /// @notice Moves reserve USDT out (to the broker account's funding wallet).
    function withdrawReserve(address to, uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (to == address(0)) revert ZeroAddress();
        usdt.safeTransfer(to, amount);
        emit ReserveWithdrawn(to, amount);
    }

    // --- users -----------------------------------------------------------------------------

    function deposit(bytes32 symbol, uint256 usdtAmount)
        external
        whenNotPaused
        returns (uint256 depositId)
    {
        if (usdtAmount == 0) revert ZeroAmount();
        if (!isListed[symbol]) revert SymbolNotListed(symbol);
        depositId = nextDepositId++;
        deposits[depositId] = DepositInfo(msg.sender, symbol, usdtAmount, false, false);
        usdt.safeTransferFrom(msg.sender, address(this), usdtAmount);
        emit Deposit(depositId, msg.sender, symbol, usdtAmount);
    }

    function requestCancel(uint256 depositId) external {
        DepositInfo storage d = deposits[depositId];
        if (d.user == address(0)) revert UnknownDeposit(depositId);
        if (d.user != msg.sender) revert NotDepositor(depositId, msg.sender);
        if (d.settled) revert AlreadySettled(depositId);
        if (d.cancelRequested) revert CancelAlreadyRequested(depositId);
        d.cancelRequested = true;
        emit CancelRequested(depositId, msg.sender);
    }

    function redeem(bytes32 symbol, uint256 shares)
        external
        whenNotPaused
        returns (uint256 redeemId)
    {
        if (shares == 0) revert ZeroAmount();
        StockToken token = tokenOf[symbol];
        if (address(token) == address(0)) revert SymbolNotListed(symbol);
        redeemId = nextRedeemId++;
        redeems[redeemId] = RedeemInfo(msg.sender, symbol, shares, false);
        token.burn(msg.sender, shares);
        emit Redeem(redeemId, msg.sender, symbol, shares);
    }

    // --- settlement (operator, at most once per id) -----------------------------------------

    function settleDeposit(uint256 depositId, uint256 sharesToMint, uint256 usdtRefund)
        external
        onlyRole(OPERATOR_ROLE)
    {
        DepositInfo storage d = deposits[depositId];
        if (d.user == address(0)) revert UnknownDeposit(depositId);
        if (d.settled) revert AlreadySettled(depositId);
        uint256 refunded = refundedOf[depositId];
        if (usdtRefund + refunded > d.usdtAmount) {
            revert RefundAboveDeposit(depositId, usdtRefund + refunded, d.usdtAmount);
        }
        d.settled = true;
        if (sharesToMint > 0) tokenOf[d.symbol].mint(d.user, sharesToMint);
        if (usdtRefund > 0) usdt.safeTransfer(d.user, usdtRefund);
        emit DepositSettled(depositId, d.user, sharesToMint, usdtRefund);
    }

    /// @notice Manual refund of part of a deposit not yet settled, paid to the depositor.
    /// Each refund id pays at most once (RefundIdUsed), so a retried transaction never pays
    /// twice; manual refunds together never exceed the deposit (RefundAboveDeposit).
    function refundDeposit(uint256 depositId, uint256 refundId, uint256 amount)
        external
        onlyRole(OPERATOR_ROLE)
    {
        if (amount == 0) revert ZeroAmount();
        if (refundIdUsed[refundId]) revert RefundIdUsed(refundId);
        DepositInfo storage d = deposits[depositId];
        if (d.user == address(0)) revert UnknownDeposit(depositId);
        if (d.settled) revert AlreadySettled(depositId);
        uint256 refunded = refundedOf[depositId] + amount;
        if (refunded > d.usdtAmount) revert RefundAboveDeposit(depositId, refunded, d.usdtAmount);
        refundIdUsed[refundId] = true;
        refundedOf[depositId] = refunded;
        usdt.safeTransfer(d.user, amount);
        emit DepositRefunded(depositId, refundId, d.user, amount);
    }

    function settleRedeem(uint256 redeemId, uint256 usdtPayout, uint256 sharesToReturn)
        external
        onlyRole(OPERATOR_ROLE)
    {
        RedeemInfo storage r = redeems[redeemId];
        if (r.user == address(0)) revert UnknownRedeem(redeemId);
        if (r.settled) revert AlreadySettled(redeemId);
        r.settled = true;
        if (sharesToReturn > 0) tokenOf[r.symbol].mint(r.user, sharesToReturn);
        if (usdtPayout > 0) usdt.safeTransfer(r.user, usdtPayout);
        emit RedeemSettled(redeemId, r.user, usdtPayout, sharesToReturn);
    }

    function isDepositSettled(uint256 depositId) external view returns (bool) {
        return deposits[depositId].settled;
    }

    function isRedeemSettled(uint256 redeemId) external view returns (bool) {
        return redeems[redeemId].settled;
    }
}
